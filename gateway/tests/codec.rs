//! The gateway's own HTTP/1.1 codec message by message, over raw sockets on both sides: what a
//! client sends and gets, and what a scripted upstream receives, byte for byte where it matters.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that answers each request by its path (`answer`), records every request's raw
/// bytes, after a `101` echoes whatever it reads, closes after the answers to `/cut` and
/// `/until-close`, and closes without answering `/drop`.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Scripted {
    async fn start(answer: fn(&str) -> Vec<u8>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = request_end(&buf) else {
                            let mut chunk = [0u8; 4096];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let request: Vec<u8> = buf.drain(..end).collect();
                        let path = String::from_utf8_lossy(&request)
                            .split(' ')
                            .nth(1)
                            .unwrap_or("")
                            .to_owned();
                        log.lock().expect("lock").push(request);
                        if path == "/drop" {
                            // Closed without an answer, as an upstream that acted on a request
                            // and then failed would.
                            return;
                        }
                        let reply = answer(&path);
                        let upgraded = reply.starts_with(b"HTTP/1.1 101");
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                        if path == "/cut" || path == "/until-close" {
                            // The connection ends the answer: inside its body, or as its end.
                            return;
                        }
                        if upgraded {
                            // Echo the tunnel's bytes, those already read first.
                            let _ = stream.write_all(&buf).await;
                            let (mut read, mut write) = stream.split();
                            let _ = tokio::io::copy(&mut read, &mut write).await;
                            return;
                        }
                    }
                });
            }
        });
        Scripted { addr, seen }
    }

    /// How many requests after the first `before` hold `text`.
    fn seen_since(&self, before: usize, text: &str) -> usize {
        self.seen()[before..]
            .iter()
            .filter(|r| r.contains(text))
            .count()
    }

    fn seen(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }
}

/// Where the first request in `buf` ends (head, and a Content-Length or chunked body).
fn request_end(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        // The last chunk (`0`), then its trailers up to the empty line.
        let last = buf[head_end..]
            .windows(5)
            .position(|w| w == b"0\r\n\r\n" || w.starts_with(b"0\r\nx"))?;
        let from = head_end + last;
        let end = buf[from..].windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        return Some(from + end);
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head_end + length).then_some(head_end + length)
}

fn answer(path: &str) -> Vec<u8> {
    match path {
        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(),
        "/trailers" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\nx-sum: 6\r\n\r\n".to_vec()
        }
        "/cut" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
        "/until-close" => b"HTTP/1.1 200 OK\r\n\r\nwhole".to_vec(),
        "/no-content" => b"HTTP/1.1 204 No Content\r\nContent-Length: 44\r\n\r\n".to_vec(),
        "/early-hints" => b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nConnection: x-secret\r\nX-Secret: 1\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        "/ws" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            .to_vec(),
        "/ws-other" => b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
            .to_vec(),
        path => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{path}",
            path.len()
        )
        .into_bytes(),
    }
}

async fn gateway(upstream: &Scripted) -> (tempfile::TempDir, gateway::Gateway) {
    pool_gateway(&[upstream.addr], "health_check: { interval_ms: 0 }\n").await
}

/// Read from `stream` until `until` holds for what was read (or the stream closes).
async fn read_until(stream: &mut TcpStream, until: impl Fn(&str) -> bool) -> String {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !until(&String::from_utf8_lossy(&got)) {
        match tokio::time::timeout(T, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "nothing more within {T:?}: {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    read_until(stream, |_| false).await
}

const T: std::time::Duration = std::time::Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_head_answers_have_no_body() {
    let upstream = Scripted::start(answer).await;
    let (_dir, gateway) = gateway(&upstream).await;
    let one = |path: &str, method: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\n\r\n")
    };
    let pipelined = [
        one("/a", "GET"),
        one("/head", "HEAD"),
        one("/b", "GET"),
        "GET /c HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nConnection: close\r\n\r\n".to_owned(),
    ]
    .concat();
    let mut client = connect_and_write(gateway.http_addrs[0], pipelined.as_bytes()).await;
    let answers = read_to_close(&mut client).await;
    // Four answers, in the order asked; the HEAD answer keeps the upstream's length and has
    // no body: the next answer starts right after its head.
    let answers: Vec<&str> = answers.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(answers.len(), 4, "{answers:?}");
    assert!(answers[0].ends_with("\r\n\r\n/a"), "{}", answers[0]);
    assert!(
        answers[1]
            .to_ascii_lowercase()
            .contains("content-length: 5\r\n"),
        "{}",
        answers[1]
    );
    assert!(answers[1].ends_with("\r\n\r\n"), "{}", answers[1]);
    assert!(answers[2].ends_with("\r\n\r\n/b"), "{}", answers[2]);
    assert!(answers[3].ends_with("\r\n\r\n/c"), "{}", answers[3]);
    assert_eq!(upstream.seen().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_keeps_the_connection_only_when_asked() {
    let upstream = Scripted::start(answer).await;
    let (_dir, gateway) = gateway(&upstream).await;
    let kept = "GET /a HTTP/1.0\r\nConnection: keep-alive\r\nX-User-Id: 7\r\n\r\n";
    let mut client = connect_and_write(gateway.http_addrs[0], kept.as_bytes()).await;
    let first = read_until(&mut client, |s| s.ends_with("/a")).await;
    assert!(first.starts_with("HTTP/1.0 200"), "{first}");
    assert!(
        first
            .to_ascii_lowercase()
            .contains("connection: keep-alive"),
        "{first}"
    );
    client
        .write_all(b"GET /b HTTP/1.0\r\nX-User-Id: 7\r\n\r\n")
        .await
        .expect("write");
    let second = read_to_close(&mut client).await;
    assert!(
        second.starts_with("HTTP/1.0 200") && second.ends_with("/b"),
        "{second}"
    );
    // The upstream was asked in HTTP/1.1, with a Host.
    for seen in upstream.seen() {
        assert!(seen.contains(" HTTP/1.1\r\nhost: "), "{seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_and_not_passed_on() {
    let upstream = Scripted::start(answer).await;
    let (_dir, gateway) = gateway(&upstream).await;
    let mut client = connect_and_write(
        gateway.http_addrs[0],
        b"PUT /put HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await;
    let interim = read_until(&mut client, |s| s.ends_with("\r\n\r\n")).await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    client.write_all(b"hello").await.expect("body");
    let answer = read_until(&mut client, |s| s.ends_with("/put")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = upstream.seen();
    assert!(seen[0].ends_with("\r\n\r\nhello"), "{}", seen[0]);
    assert!(
        !seen[0].to_ascii_lowercase().contains("expect:"),
        "{}",
        seen[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_pass_as_they_came_with_trailers_and_decoded_for_http_1_0() {
    let upstream = Scripted::start(answer).await;
    let (_dir, gateway) = gateway(&upstream).await;
    let addr = gateway.http_addrs[0];
    // A chunked request body reaches the upstream chunk for chunk, its trailer included.
    let body = "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-check: 1\r\n\r\n";
    let mut client = connect_and_write(
        addr,
        format!("POST /post HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nTransfer-Encoding: chunked\r\n\r\n{body}").as_bytes(),
    )
    .await;
    let answer = read_until(&mut client, |s| s.ends_with("/post")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        upstream.seen()[0].ends_with(&format!("\r\n\r\n{body}")),
        "{}",
        upstream.seen()[0]
    );
    // A chunked response with a trailer reaches an HTTP/1.1 client as it came.
    client
        .write_all(b"GET /trailers HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\n\r\n")
        .await
        .expect("write");
    let answer = read_until(&mut client, |s| s.ends_with("x-sum: 6\r\n\r\n")).await;
    assert!(
        answer.contains("transfer-encoding: chunked\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\nx-sum: 6\r\n\r\n"),
        "{answer}"
    );
    // An HTTP/1.0 client gets the data decoded, ended by the close.
    let mut old = connect_and_write(addr, b"GET /trailers HTTP/1.0\r\nX-User-Id: 7\r\n\r\n").await;
    let answer = read_to_close(&mut old).await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("transfer-encoding"),
        "{answer}"
    );
    assert!(answer.ends_with("\r\n\r\nonetwo"), "{answer}");

    // The gateway's own fields may not ride in a request's trailers: the upstream never gets
    // the whole request, and the client a 400 naming why.
    let mut forger = connect_and_write(
        addr,
        b"POST /forged HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-Unitgate-Unit: u9\r\n\r\n",
    )
    .await;
    let answer = read_to_close(&mut forger).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("X-Unitgate-* field in the trailers"),
        "{answer}"
    );
    assert!(
        upstream.seen().iter().all(|r| !r.contains("u9")),
        "{:?}",
        upstream.seen()
    );
    // Nor may the fields that frame, route, forward or authenticate a request: an upstream
    // that merges trailers into the header section would take the client's word for them.
    for trailer in [
        "Content-Length: 0",
        "Host: admin.internal",
        "X-Forwarded-For: 10.6.6.6",
        "X-Real-IP: 10.6.6.6",
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "Authorization: Bearer forged",
        "X_User_Id: 4321",
        // The route's routing-key field: the request was routed by the one in its head.
        "X-User-Id: 4321",
        "x-user-id: 7",
    ] {
        let mut forger = connect_and_write(
            addr,
            format!("POST /forged HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n{trailer}\r\n\r\n").as_bytes(),
        )
        .await;
        let answer = read_to_close(&mut forger).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{trailer}: {answer}");
        assert!(
            answer.contains("field in the trailers that only the header section may carry"),
            "{answer}"
        );
    }
    assert!(
        upstream
            .seen()
            .iter()
            // Field values, not bare digits: a random trace id may hold "4321".
            .all(|r| !r.contains("10.6.6.6") && !r.contains("forged") && !r.contains(": 4321")),
        "{:?}",
        upstream.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_becomes_a_tunnel_once_the_upstream_switched() {
    let upstream = Scripted::start(answer).await;
    let (_dir, gateway) = gateway(&upstream).await;
    // `Connection` as most clients send it, and as Firefox does (with `keep-alive`), here
    // with a field of the client's own named in it too: that one goes, `Upgrade` stays.
    for connection in ["Upgrade", "keep-alive, Upgrade, X-Own"] {
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nUpgrade: websocket\r\nX-Own: 1\r\nConnection: {connection}\r\n\r\n"
        );
        let mut client = connect_and_write(gateway.http_addrs[0], request.as_bytes()).await;
        let switched = read_until(&mut client, |s| s.ends_with("\r\n\r\n")).await;
        assert!(switched.starts_with("HTTP/1.1 101"), "{switched}");
        assert!(
            switched.to_ascii_lowercase().contains("upgrade: websocket"),
            "{switched}"
        );
        client
            .write_all(b"ping through the tunnel")
            .await
            .expect("write");
        let echoed = read_until(&mut client, |s| s.ends_with("tunnel")).await;
        assert_eq!(echoed, "ping through the tunnel");
        let seen = upstream.seen();
        let sent = seen.last().expect("a request").to_ascii_lowercase();
        assert!(
            sent.contains("upgrade: websocket\r\n"),
            "{connection}: {sent}"
        );
        assert!(
            sent.contains("connection: upgrade\r\n"),
            "{connection}: {sent}"
        );
        assert_eq!(
            sent.contains("x-own:"),
            connection == "Upgrade",
            "{connection}: {sent}"
        );
    }
    // A switch to a protocol the client did not offer is no tunnel: a 502, and the
    // connection closed.
    let mut client = connect_and_write(
        gateway.http_addrs[0],
        b"GET /ws-other HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    let refused = read_to_close(&mut client).await;
    assert!(refused.starts_with("HTTP/1.1 502"), "{refused}");
    assert!(refused.contains("did not offer"), "{refused}");
    // An upgrade to h2c is no tunnel: the request goes on as a plain one, without `Upgrade`.
    let mut client = connect_and_write(
        gateway.http_addrs[0],
        b"GET /plain HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
    )
    .await;
    let plain = read_until(&mut client, |got| got.ends_with("/plain")).await;
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    let seen = upstream.seen();
    let sent = seen.last().expect("a request").to_ascii_lowercase();
    assert!(sent.starts_with("get /plain "), "{sent}");
    assert!(
        !sent.contains("upgrade") && !sent.contains("http2-settings"),
        "{sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_read_timeout() {
    // An upstream with a body far larger than the sockets' buffers; it reports how its write
    // ended.
    const BODY: usize = 64 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (ended, write_ended) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        while request_end(&buf).is_none() {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the gateway closed before sending the request");
            buf.extend_from_slice(&chunk[..n]);
        }
        let mut reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n").into_bytes();
        reply.resize(reply.len() + BODY, b'x');
        let _ = ended.send(stream.write_all(&reply).await.is_err());
    });
    let (_dir, gateway) = pool_gateway(
        &[addr],
        "health_check: { interval_ms: 0 }\ntimeouts: { read_ms: 300 }\n",
    )
    .await;
    let mut client = connect_and_write(
        gateway.http_addrs[0],
        b"GET /big HTTP/1.1\r\nHost: shop\r\nX-User-Id: 42\r\n\r\n",
    )
    .await;
    // The client reads nothing: the gateway gives up on it and drops the upstream connection,
    // which the upstream sees as its write failing.
    let failed = tokio::time::timeout(T, write_ended)
        .await
        .expect("the upstream's write ended")
        .expect("reported");
    assert!(failed, "the upstream could write the whole body to nobody");
    let mut got = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(T, client.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the gateway kept the connection open"),
        }
    }
    assert!(got < BODY, "the client got the whole body ({got} bytes)");
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_requests_trailers_reach_an_http1_upstream_without_the_fields_it_may_not_carry() {
    let upstream = Scripted::start(answer).await;
    let (_dir, gateway) = gateway(&upstream).await;
    let mut sender = h2c(gateway.http_addrs[0]).await;
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-sum", http::HeaderValue::from_static("6"));
    trailers.insert("x-unitgate-unit", http::HeaderValue::from_static("u9"));
    trailers.insert(
        "x-forwarded-for",
        http::HeaderValue::from_static("10.6.6.6"),
    );
    trailers.insert(
        "authorization",
        http::HeaderValue::from_static("Bearer forged"),
    );
    // The route's routing-key field: the request was routed by the one in its head.
    trailers.insert("x-user-id", http::HeaderValue::from_static("4321"));
    let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
        Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
            b"hello",
        ))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let request = http::Request::post("http://a/post")
        .header("x-user-id", "7")
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
        .expect("request");
    let response = sender.send_request(request).await.expect("answered");
    assert_eq!(response.status(), 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].ends_with("5\r\nhello\r\n0\r\nx-sum: 6\r\n\r\n"),
        "{}",
        seen[0]
    );
}

/// How the gateway ends a client's connection after `request`: `Ok` for an orderly close, the
/// error's kind for a reset; and what the client got before.
async fn ending(
    gateway: &gateway::Gateway,
    request: &str,
) -> (Result<(), std::io::ErrorKind>, String) {
    let mut client = connect_and_write(gateway.http_addrs[0], request.as_bytes()).await;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        let read = tokio::time::timeout(T, client.read(&mut chunk))
            .await
            .expect("the gateway ends the connection in time");
        match read {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(error) => break Err(error.kind()),
        }
    };
    (end, String::from_utf8_lossy(&got).into_owned())
}

/// An answer the upstream cuts short inside its body ends the client's connection: with a
/// reset for an HTTP/1.0 client, whose decoded body ends with the connection (an orderly close
/// would pass for the body's end); with a close for an HTTP/1.1 client, whose chunked body
/// shows it is cut (no last chunk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_short_resets_the_connection_only_where_its_framing_cannot_tell() {
    let upstream = Scripted::start(answer).await;
    let (_dir, gateway) = gateway(&upstream).await;
    let request = |version| format!("GET /cut HTTP/{version}\r\nHost: a\r\nX-User-Id: 7\r\n\r\n");
    let (end, got) = ending(&gateway, &request("1.0")).await;
    assert_eq!(
        end,
        Err(std::io::ErrorKind::ConnectionReset),
        "HTTP/1.0: {got}"
    );
    let (end, got) = ending(&gateway, &request("1.1")).await;
    assert_eq!(end, Ok(()), "HTTP/1.1: {got}");
    assert!(got.ends_with("5\r\nhello\r\n"), "no last chunk: {got}");
}

/// An answer that ends with the upstream's connection (no length, not chunked) is whole when
/// the upstream closes: the client's connection ends in an orderly close after all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_ended_by_the_upstreams_close_is_whole() {
    let upstream = Scripted::start(answer).await;
    let (_dir, gateway) = gateway(&upstream).await;
    for version in ["1.0", "1.1"] {
        let request = format!("GET /until-close HTTP/{version}\r\nHost: a\r\nX-User-Id: 7\r\n\r\n");
        let (end, got) = ending(&gateway, &request).await;
        assert_eq!(end, Ok(()), "HTTP/{version}: {got}");
        assert!(got.ends_with("\r\n\r\nwhole"), "HTTP/{version}: {got}");
    }
}

/// An answer that ends the connection arrives whole though the client sent more after its
/// request, bytes the gateway never reads: a close with bytes unread resets the connection,
/// and the kernel drops whatever it still holds of the answer (its last segment waits for the
/// FIN to go with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_ends_the_connection_arrives_whole_with_bytes_unread_behind_it() {
    const BODY: usize = 100_000;
    let (received, got_request) = tokio::sync::mpsc::channel::<()>(1);
    let got_request = Arc::new(tokio::sync::Mutex::new(got_request));
    let go = Arc::new(tokio::sync::Notify::new());
    let answer_now = go.clone();
    let upstream = serve_each(move |mut stream| {
        let (received, answer_now) = (received.clone(), answer_now.clone());
        async move {
            let mut head = Vec::new();
            while request_end(&head).is_none() {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = received.send(()).await;
            answer_now.notified().await;
            let mut answer =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n").into_bytes();
            answer.resize(answer.len() + BODY, b'a');
            let _ = stream.write_all(&answer).await;
        }
    })
    .await;
    let (_dir, gateway) = pool_gateway(&[upstream], "health_check: { interval_ms: 0 }\n").await;
    let mut client = TcpStream::connect(gateway.http_addrs[0])
        .await
        .expect("connect");
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    // The gateway has read the request (the upstream has it): what comes now stays unread.
    got_request
        .lock()
        .await
        .recv()
        .await
        .expect("the request went upstream");
    client
        .write_all(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    go.notify_one();
    let mut answer = Vec::new();
    let mut chunk = vec![0u8; 65536];
    // The connection may end in a reset once the answer is in: it is the answer that counts.
    while let Ok(n) = client.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an answer head")
        + 4;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer[..head_end])
    );
    assert_eq!(answer.len() - head_end, BODY, "the whole body");
}

type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// Send `method path` for user 7 with the head lines `extra` (each ending in CRLF) and no
/// body on `client`, an HTTP/1.1 connection; what came back once `until` holds for it.
async fn h1_keyed(
    client: &mut TcpStream,
    method: &str,
    path: &str,
    extra: &str,
    until: impl Fn(&str) -> bool,
) -> String {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\n{extra}Content-Length: 0\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.expect("write");
    read_until(client, until).await
}

/// Send `method path` for user 7 with the fields `extra` and no body over HTTP/2; the
/// answer's status, its body read to the end.
async fn h2_keyed(sender: &mut H2Sender, method: &str, path: &str, extra: &[(&str, &str)]) -> u16 {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://a{path}"))
        .header("x-user-id", "7");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("answered");
    let status = response.status().as_u16();
    http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body");
    status
}

/// A pooled connection that the upstream closes after a request arrived on it: the request may
/// have been acted on, so only an idempotent one goes again (RFC 9112 section 9.3.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_requests_go_again_after_a_pooled_connection_closes() {
    let upstream = Scripted::start(answer).await;
    let (_dir, gw) = gateway(&upstream).await;
    // A method-override field names the method a framework executes: it counts too.
    for (method, extra, sent) in [
        ("POST", "", 1),
        ("PATCH", "", 1),
        ("GET", "", 2),
        ("PUT", "", 2),
        ("GET", "X-HTTP-Method-Override: POST\r\n", 1),
        ("GET", "x-method-override: delete\r\n", 2),
    ] {
        let before = upstream.seen().len();
        let mut client = TcpStream::connect(gw.http_addrs[0]).await.expect("connect");
        // The first request leaves its upstream connection in the pool; the second takes it.
        h1_keyed(&mut client, "GET", "/warm", "", |got| {
            got.ends_with("/warm")
        })
        .await;
        let got = h1_keyed(&mut client, method, "/drop", extra, |got| {
            got.contains("\r\n\r\n")
        })
        .await;
        assert!(got.starts_with("HTTP/1.1 502"), "{method} {extra}: {got}");
        let drops = upstream.seen_since(before, " /drop ");
        assert_eq!(
            drops, sent,
            "{method} /drop {extra}reached the upstream {drops} times"
        );
    }
    // A pooled connection closed as it was taken says nothing of the endpoint: the three
    // requests that could not go again are counted apart, never against its health. The
    // three that went again met a close on a new connection, which does count.
    assert_eq!(upstream_errors(&gw, "stale"), 3);
    assert_eq!(upstream_errors(&gw, "other"), 3);
}

/// An upstream whose connections answer their first request and meet any later one by
/// closing, after holding it for `hold`.
async fn answers_once_per_connection(hold: std::time::Duration) -> SocketAddr {
    serve_each(move |mut stream| async move {
        let mut first = true;
        loop {
            if read_head(&mut stream).await.is_none() {
                return;
            }
            if !first {
                tokio::time::sleep(hold).await;
                return;
            }
            first = false;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
    })
    .await
}

/// A GET that meets a stale pooled connection goes again on a new connection, not on another
/// pooled one (here the other endpoint's, as stale); and a close that comes only after the
/// upstream held the request is no stale connection but the upstream's failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_retry_takes_a_new_connection_and_a_late_close_is_a_failure() {
    let quick = std::time::Duration::ZERO;
    let (a, b) = (
        answers_once_per_connection(quick).await,
        answers_once_per_connection(quick).await,
    );
    let (_dir, gw) = pool_gateway(&[a, b], "health_check: { interval_ms: 0 }\nthreads: 1\n").await;
    let mut client = TcpStream::connect(gw.http_addrs[0]).await.expect("connect");
    // Round robin: one pooled connection on each endpoint.
    for path in ["/warm/1", "/warm/2"] {
        let got = h1_keyed(&mut client, "GET", path, "", |got| got.ends_with("ok")).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    }
    let got = h1_keyed(&mut client, "GET", "/again", "", |got| got.ends_with("ok")).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");

    let slow = answers_once_per_connection(std::time::Duration::from_millis(1500)).await;
    let (_dir, gw) = pool_gateway(&[slow], "health_check: { interval_ms: 0 }\nthreads: 1\n").await;
    let mut client = TcpStream::connect(gw.http_addrs[0]).await.expect("connect");
    let got = h1_keyed(&mut client, "GET", "/warm", "", |got| got.ends_with("ok")).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let got = h1_keyed(&mut client, "POST", "/held", "", |got| {
        got.contains("\r\n\r\n")
    })
    .await;
    assert!(got.starts_with("HTTP/1.1 502"), "{got}");
    assert_eq!(upstream_errors(&gw, "stale"), 0);
    assert_eq!(upstream_errors(&gw, "other"), 1);
}

/// Pooled connections the upstream closes idle meet requests now and then (its keep-alive
/// timeout shorter than the pool's). A run of POSTs meeting them, which cannot go again, get
/// `502`s but leave the endpoint in the pool, where three broken exchanges in a row would
/// eject it; over both front ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connections_do_not_eject_a_healthy_endpoint() {
    const POOLED: usize = 4;
    // Each connection's first request is answered once all of them are in, so that the one
    // worker's pool ends up holding `POOLED` connections; any later request is met by a close.
    let all_in = Arc::new(tokio::sync::Barrier::new(POOLED));
    let upstream = serve_each(move |mut stream| {
        let all_in = all_in.clone();
        async move {
            if read_head(&mut stream).await.is_none() {
                return;
            }
            all_in.wait().await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            let mut chunk = [0u8; 4096];
            let _ = stream.read(&mut chunk).await;
        }
    })
    .await;
    for http2 in [false, true] {
        let (_dir, gw) = pool_gateway(
            &[upstream],
            "health_check: { interval_ms: 0 }\nthreads: 1\n",
        )
        .await;
        let addr = gw.http_addrs[0];
        let sender = h2c(addr).await;
        // Sends `method /path` over the front end under test; the answer's status line.
        let keyed = |method: &'static str, path: &'static str| {
            let mut sender = sender.clone();
            async move {
                if http2 {
                    return h2_keyed(&mut sender, method, path, &[]).await.to_string();
                }
                let mut client = TcpStream::connect(addr).await.expect("connect");
                let got = h1_keyed(&mut client, method, path, "", |got| {
                    got.contains("\r\n\r\n")
                })
                .await;
                got[9..12].to_owned()
            }
        };
        let warm = (0..POOLED).map(|_| keyed("GET", "/warm"));
        for status in futures_util::future::join_all(warm).await {
            assert_eq!(status, "200", "HTTP/2: {http2}");
        }
        for _ in 0..POOLED {
            assert_eq!(keyed("POST", "/drop").await, "502", "HTTP/2: {http2}");
        }
        assert_eq!(
            upstream_errors(&gw, "stale"),
            POOLED as u64,
            "HTTP/2: {http2}"
        );
        let metrics = get_text(&client(), gw.admin_addr, "/metrics").await;
        let healthy = format!(
            "unitgate_upstream_healthy{{region=\"local\",service=\"app\",endpoint=\"{upstream}\"}} 1"
        );
        assert!(metrics.contains(&healthy), "HTTP/2: {http2}\n{metrics}");
    }
}

/// An upstream that sends interim answers without end is always readable, so no read times
/// out: the exchange still ends, with a `502`, after a bounded number of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_flooding_interim_answers_gets_a_502() {
    let flood = serve_each(|mut stream| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        while stream
            .write_all(b"HTTP/1.1 102 Processing\r\n\r\n")
            .await
            .is_ok()
        {}
    })
    .await;
    let (_dir, gw) = pool_gateway(&[flood], "health_check: { interval_ms: 0 }\n").await;
    let mut client = connect_and_write(
        gw.http_addrs[0],
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\n\r\n",
    )
    .await;
    let got = tokio::time::timeout(
        T,
        read_until(&mut client, |got| got.contains("HTTP/1.1 502")),
    )
    .await
    .expect("the flood was relayed for 10 s without an end");
    let relayed = got.matches("HTTP/1.1 102 Processing").count();
    assert!(relayed <= 16, "{relayed} interim answers relayed");
}

/// A 204 answer goes on without the Content-Length an upstream gave it (RFC 9110 section 8.6),
/// and the answer after it on the connection is read as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_content_answer_loses_its_content_length() {
    let upstream = Scripted::start(answer).await;
    let (_dir, gw) = gateway(&upstream).await;
    let mut client = connect_and_write(
        gw.http_addrs[0],
        b"GET /no-content HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nConnection: close\r\n\r\n",
    )
    .await;
    let got = read_to_close(&mut client).await;
    let (no_content, after) = got.split_once("HTTP/1.1 200 OK\r\n").expect("two answers");
    assert!(no_content.starts_with("HTTP/1.1 204"), "{got}");
    assert!(
        !no_content.to_ascii_lowercase().contains("content-length"),
        "{no_content}"
    );
    assert!(after.ends_with("\r\n\r\n/after"), "{after}");
}

/// No upstream failure was counted against any endpoint of `gw`.
/// The gateway's count of failed upstream exchanges of `kind`.
fn upstream_errors(gw: &gateway::Gateway, kind: &str) -> u64 {
    let label = format!("kind=\"{kind}\"}}");
    gw.metrics
        .render(&[])
        .lines()
        .filter(|l| l.starts_with("unitgate_upstream_errors_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn assert_nothing_blamed(gw: &gateway::Gateway) {
    let metrics = gw.metrics.render(&[]);
    let blamed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("unitgate_upstream_errors_total"))
        .collect();
    assert!(blamed.is_empty(), "{blamed:?}");
}

/// An upstream that answers every request with a 413 as soon as its head is in, without
/// reading the body: for `POST /hold` it then neither reads on nor closes until `hold` is
/// notified; for any other it closes at once with the body unread (the kernel resets it).
async fn answers_413_early(hold: Arc<tokio::sync::Notify>) -> SocketAddr {
    serve_each(move |mut stream| {
        let hold = hold.clone();
        async move {
            let Some(head) = read_head(&mut stream).await else {
                return;
            };
            let _ = stream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!")
                .await;
            if head.starts_with(b"POST /hold ") {
                hold.notified().await;
            }
        }
    })
    .await
}

/// An upstream that answers before the request body is all there (a 413 for a body it will
/// not take) gets its answer to the client, whether it then closes with the body unread (a
/// reset) or holds the connection without reading on; it is not blamed for either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_whole_body_reaches_the_client() {
    let hold = Arc::new(tokio::sync::Notify::new());
    let upstream = answers_413_early(hold.clone()).await;
    let (_dir, gw) = pool_gateway(&[upstream], "health_check: { interval_ms: 0 }\n").await;
    for path in ["/reset", "/hold", "/reset", "/hold"] {
        let client = TcpStream::connect(gw.http_addrs[0]).await.expect("connect");
        let (mut from_gateway, mut to_gateway) = client.into_split();
        let sender = tokio::spawn(async move {
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nContent-Length: 8388608\r\n\r\n"
            );
            to_gateway.write_all(head.as_bytes()).await?;
            let chunk = vec![b'x'; 65536];
            for _ in 0..128 {
                to_gateway.write_all(&chunk).await?;
            }
            std::io::Result::Ok(())
        });
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        // The connection may end in a reset once the answer is in: it is the answer that counts.
        while !got.ends_with(b"too big!") {
            match tokio::time::timeout(T, from_gateway.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("{path}: no answer within {T:?}"),
            }
        }
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 413"), "{path}: {got}");
        assert!(got.ends_with("\r\n\r\ntoo big!"), "{path}: {got}");
        // The connection ends after it, and says so.
        assert!(got.contains("\r\nconnection: close\r\n"), "{path}: {got}");
        sender.abort();
    }
    hold.notify_waiters();
    assert_nothing_blamed(&gw);
}

/// An interim answer (103 Early Hints) goes on with its fields but none about framing or the
/// connection: it has no body, and a client that believed a Content-Length on it would read
/// the final answer as that body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_answers_go_on_without_framing_or_connection_fields() {
    let upstream = Scripted::start(answer).await;
    let (_dir, gw) = gateway(&upstream).await;
    let mut client = connect_and_write(
        gw.http_addrs[0],
        b"GET /early-hints HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nConnection: close\r\n\r\n",
    )
    .await;
    let got = read_to_close(&mut client).await;
    let (interim, last) = got.split_once("\r\n\r\n").expect("an interim head");
    assert!(interim.starts_with("HTTP/1.1 103 Early Hints\r\n"), "{got}");
    assert!(
        interim.contains("\r\nLink: </s.css>; rel=preload"),
        "{interim}"
    );
    for gone in ["content-length", "connection", "x-secret", "keep-alive"] {
        assert!(
            !interim.to_ascii_lowercase().contains(gone),
            "{gone} in {interim}"
        );
    }
    assert!(last.starts_with("HTTP/1.1 200 OK\r\n"), "{last}");
    assert!(last.ends_with("\r\n\r\nok"), "{last}");
}

/// The same for an HTTP/2 client's requests, which go to an HTTP/1.1 upstream over the
/// codec's client: a GET that meets a pooled connection the upstream closed goes again once,
/// on a new one; a POST does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_idempotent_request_goes_again_after_a_pooled_connection_closes() {
    let upstream = Scripted::start(answer).await;
    let (_dir, gw) = gateway(&upstream).await;
    let mut sender = h2c(gw.http_addrs[0]).await;
    for (method, overrides, sent) in [
        ("POST", None, 1),
        ("GET", None, 2),
        ("DELETE", None, 2),
        ("GET", Some("PATCH"), 1),
    ] {
        let before = upstream.seen().len();
        // The first request leaves its upstream connection in the pool; the second takes it.
        assert_eq!(h2_keyed(&mut sender, "GET", "/warm", &[]).await, 200);
        let extra: Vec<(&str, &str)> = overrides
            .map(|m| ("x-http-method", m))
            .into_iter()
            .collect();
        let status = h2_keyed(&mut sender, method, "/drop", &extra).await;
        assert_eq!(status, 502, "{method} {overrides:?}");
        let drops = upstream.seen_since(before, " /drop ");
        assert_eq!(
            drops, sent,
            "{method} {overrides:?} /drop reached the upstream {drops} times"
        );
    }
    assert_eq!(upstream_errors(&gw, "stale"), 2);
    assert_eq!(upstream_errors(&gw, "other"), 2);
}

/// An interim answer (103, or a 100 nobody asked for) while the request body is still coming
/// is no early answer: it goes on (a 100 does not), and so does the body, to the final answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_answers_during_the_body_let_the_body_go_on() {
    const BODY: usize = 6000;
    let upstream = serve_each(|mut stream| async move {
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        };
        let interim: &[u8] = if got.starts_with(b"POST /continue ") {
            b"HTTP/1.1 100 Continue\r\n\r\n"
        } else {
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        };
        if stream.write_all(interim).await.is_err() {
            return;
        }
        while got.len() - head_end < BODY {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        let answer = format!("got {}", got.len() - head_end);
        let _ = stream
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                )
                .as_bytes(),
            )
            .await;
    })
    .await;
    let (_dir, gw) = pool_gateway(&[upstream], "health_check: { interval_ms: 0 }\n").await;
    for (path, relayed) in [("/hints", true), ("/continue", false)] {
        let mut client = connect_and_write(
            gw.http_addrs[0],
            format!(
                "POST {path} HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nContent-Length: {BODY}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        client.write_all(&[b'x'; 1000]).await.expect("write");
        if relayed {
            // The rest of the body goes once the client has the interim answer.
            let hints = read_until(&mut client, |got| got.ends_with("\r\n\r\n")).await;
            assert!(hints.starts_with("HTTP/1.1 103 Early Hints\r\n"), "{hints}");
        }
        client.write_all(&[b'x'; BODY - 1000]).await.expect("write");
        let answer = read_until(&mut client, |got| got.ends_with(&format!("got {BODY}"))).await;
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "{path}: {answer}"
        );
        assert!(!answer.contains("100 Continue"), "{path}: {answer}");
    }
}

/// The same for an HTTP/2 client's request to an HTTP/1.1 upstream: the early answer is the
/// response, not a 502, and the endpoint is not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_whole_body_reaches_an_http2_client() {
    let hold = Arc::new(tokio::sync::Notify::new());
    let upstream = answers_413_early(hold.clone()).await;
    let (_dir, gw) = pool_gateway(&[upstream], "health_check: { interval_ms: 0 }\n").await;
    let mut sender = h2c(gw.http_addrs[0]).await;
    for path in ["/reset", "/hold", "/reset", "/hold"] {
        let chunk = bytes::Bytes::from(vec![b'x'; 65536]);
        let frames = (0..128).map(move |_| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone()))
        });
        let request = http::Request::post(format!("http://a{path}"))
            .header("x-user-id", "7")
            .body(http_body_util::StreamBody::new(futures_util::stream::iter(
                frames,
            )))
            .expect("request");
        let response = tokio::time::timeout(T, sender.send_request(request))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer within {T:?}"))
            .expect("answered");
        assert_eq!(response.status(), 413, "{path}");
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"too big!", "{path}");
    }
    hold.notify_waiters();
    assert_nothing_blamed(&gw);
}

/// An upstream that answers as it reads (a 200 straight after the head, then the body echoed
/// as it comes) gets the whole body, from an HTTP/1.1 client and from an HTTP/2 one: only an
/// error answer, or one that closes, ends the upload early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_answers_as_it_reads_gets_the_whole_body() {
    const BODY: usize = 3000;
    let (heads, mut head_arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let upstream = serve_each(move |mut stream| {
        let heads = heads.clone();
        async move {
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            };
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            let _ = heads.send(());
            let mut echoed = head_end;
            loop {
                if got.len() > echoed {
                    let piece = &got[echoed..];
                    let framed = format!("{:x}\r\n", piece.len());
                    let mut out = framed.into_bytes();
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\r\n");
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                    echoed = got.len();
                }
                if echoed - head_end >= BODY {
                    let _ = stream.write_all(b"0\r\n\r\n").await;
                    return;
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        }
    })
    .await;
    let (_dir, gw) = pool_gateway(&[upstream], "health_check: { interval_ms: 0 }\n").await;
    // HTTP/1.1: the body goes once the upstream has the head (and has answered).
    let mut client = connect_and_write(
        gw.http_addrs[0],
        format!("POST /echo HTTP/1.1\r\nHost: a\r\nX-User-Id: 7\r\nContent-Length: {BODY}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    head_arrived.recv().await.expect("the head went upstream");
    for _ in 0..3 {
        client.write_all(&[b'x'; BODY / 3]).await.expect("write");
    }
    let answer = read_to_close(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(answer.matches('x').count(), BODY, "{answer}");
    // HTTP/2.
    let mut sender = h2c(gw.http_addrs[0]).await;
    let (pieces, body) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
    let frames = futures_util::stream::unfold(body, |mut body| async move {
        let piece = body.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(piece)),
            body,
        ))
    });
    let request = http::Request::post("http://a/echo")
        .header("x-user-id", "7")
        .header("content-length", BODY.to_string())
        .body(http_body_util::StreamBody::new(Box::pin(frames)))
        .expect("request");
    let response = tokio::spawn(sender.send_request(request));
    head_arrived.recv().await.expect("the head went upstream");
    for _ in 0..3 {
        pieces
            .send(bytes::Bytes::from(vec![b'x'; BODY / 3]))
            .expect("send");
    }
    drop(pieces);
    let response = tokio::time::timeout(T, response)
        .await
        .expect("an answer within T")
        .expect("joined")
        .expect("answered");
    assert_eq!(response.status(), 200);
    let echoed = tokio::time::timeout(T, http_body_util::BodyExt::collect(response.into_body()))
        .await
        .expect("the whole answer within T")
        .expect("body")
        .to_bytes();
    assert_eq!(echoed.len(), BODY);
}

/// The gateway of a one-unit pool with `upstream`, whose writes have 200 ms of grace once their
/// unit freezes.
async fn graceful_gateway(upstream: SocketAddr) -> (tempfile::TempDir, gateway::Gateway) {
    pool_gateway(
        &[upstream],
        "health_check: { interval_ms: 0 }\ntimeouts: { moved_write_grace_ms: 200 }\n",
    )
    .await
}

/// The frozen table is vouched for once the one write that held it back was ended.
async fn assert_one_write_ended(gateway: &gateway::Gateway) {
    tokio::time::timeout(T, settled_on(&gateway.store, 2))
        .await
        .expect("v2 vouched for within the test's time");
    assert_eq!(
        gateway
            .metrics
            .writes_ended
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// A write the gateway ends before any of its answer went out (its unit froze, and it outlasted
/// its grace) is answered `503` with `Retry-After`, and the connection closed after it (its
/// body is half read): the client learns that it may send the write again, where a reset would
/// leave it guessing whether it was done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_ended_before_its_answer_began_is_answered_503() {
    // An upstream that reads what comes and answers nothing; `heard` once it has a head.
    let heard = Arc::new(tokio::sync::Notify::new());
    let upstream = {
        let heard = heard.clone();
        serve_each(move |mut stream| {
            let heard = heard.clone();
            async move {
                let mut got = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                    }
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        heard.notify_one();
                    }
                }
            }
        })
        .await
    };
    let (dir, gateway) = graceful_gateway(upstream).await;
    // Half the body: the write is still going when its unit freezes.
    let mut client = connect_and_write(
        gateway.http_addrs[0],
        b"POST /orders HTTP/1.1\r\nHost: shop\r\nX-User-Id: 42\r\nContent-Length: 10\r\n\r\nhalf_",
    )
    .await;
    tokio::time::timeout(T, heard.notified())
        .await
        .expect("the upstream has the head");
    freeze_pool_unit(dir.path(), &gateway.store);

    let answer = read_to_close(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("\r\nretry-after: "), "{answer}");
    assert!(lower.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(answer.contains(gateway::store::WRITE_ENDED), "{answer}");
    assert_one_write_ended(&gateway).await;
}

/// A write the gateway ends once its answer has begun is cut off: an answer begun cannot be
/// taken back, so the connection is reset, with nothing after the part the client got that
/// could pass for the answer's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_ended_after_its_answer_began_is_cut_off_by_a_reset() {
    let let_go = Arc::new(tokio::sync::Notify::new());
    let upstream = endless_answer(let_go.clone()).await;
    let (dir, gateway) = graceful_gateway(upstream).await;
    let mut client = connect_and_write(
        gateway.http_addrs[0],
        b"POST /orders HTTP/1.1\r\nHost: shop\r\nX-User-Id: 42\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let begun = read_until(&mut client, |got| got.contains("\r\n\r\n")).await;
    assert!(begun.starts_with("HTTP/1.1 200 "), "{begun}");
    // The client reads no more for now: the answer fills the sockets' buffers.
    freeze_pool_unit(dir.path(), &gateway.store);
    tokio::time::timeout(T, let_go.notified())
        .await
        .expect("the upstream let go within the test's time");

    let mut rest = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let end = loop {
        match tokio::time::timeout(T, client.read(&mut chunk))
            .await
            .expect("the gateway ends the connection in time")
        {
            Ok(0) => break Ok(()),
            Ok(n) => rest.extend_from_slice(&chunk[..n]),
            Err(error) => break Err(error.kind()),
        }
    };
    assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset));
    assert!(
        !rest.windows(9).any(|w| w == b"HTTP/1.1 "),
        "no answer after the one begun"
    );
    assert_one_write_ended(&gateway).await;
}

/// An upstream that answers a request with `hints` interim answers (`103`) of `fields` fields
/// of 5,000 bytes each, then nothing until the gateway lets go; `heard` once it has a head.
async fn hints_then_silence(
    hints: usize,
    fields: usize,
    heard: Arc<tokio::sync::Notify>,
) -> SocketAddr {
    serve_each(move |mut stream| {
        let heard = heard.clone();
        async move {
            if read_head(&mut stream).await.is_none() {
                return;
            }
            heard.notify_one();
            let mut hint = b"HTTP/1.1 103 Early Hints\r\n".to_vec();
            for i in 0..fields {
                hint.extend_from_slice(format!("link-{i}: <{}>\r\n", "a".repeat(5000)).as_bytes());
            }
            hint.extend_from_slice(b"\r\n");
            for _ in 0..hints {
                if stream.write_all(&hint).await.is_err() {
                    return;
                }
            }
            let _ = stream.read(&mut [0u8; 1]).await;
        }
    })
    .await
}

/// A write ended after a whole interim answer reached the client still gets its `503`: an
/// interim answer is no part of the final one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_ended_after_an_interim_answer_is_answered_503() {
    let heard = Arc::new(tokio::sync::Notify::new());
    let upstream = hints_then_silence(1, 1, heard.clone()).await;
    let (dir, gateway) = graceful_gateway(upstream).await;
    let mut client = connect_and_write(
        gateway.http_addrs[0],
        b"POST /orders HTTP/1.1\r\nHost: shop\r\nX-User-Id: 42\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let hint = read_until(&mut client, |got| got.ends_with("\r\n\r\n")).await;
    assert!(hint.starts_with("HTTP/1.1 103 "), "{hint}");
    freeze_pool_unit(dir.path(), &gateway.store);
    let answer = read_to_close(&mut client).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert_one_write_ended(&gateway).await;
}

/// A write ended while interim answers are on their way to a client that reads nothing is
/// never answered inside one of them: the gateway may be stopped in the middle of writing one,
/// and then only a reset may follow. Whatever the client gets is whole heads, a `503` only
/// where a head ended, or a head cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_ended_inside_an_interim_answer_is_not_answered_inside_it() {
    let heard = Arc::new(tokio::sync::Notify::new());
    // 16 interim answers of about 500 KB: more than the sockets' buffers hold.
    let upstream = hints_then_silence(16, 100, heard.clone()).await;
    let (dir, gateway) = pool_gateway(
        &[upstream],
        "health_check: { interval_ms: 0 }\ntimeouts: { moved_write_grace_ms: 200 }\nlimits: { max_header_bytes: 1000000 }\n",
    )
    .await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    let mut client = socket
        .connect(gateway.http_addrs[0])
        .await
        .expect("connect");
    client
        .write_all(
            b"POST /orders HTTP/1.1\r\nHost: shop\r\nX-User-Id: 42\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .expect("write");
    tokio::time::timeout(T, heard.notified())
        .await
        .expect("the upstream has the head");
    freeze_pool_unit(dir.path(), &gateway.store);
    assert_one_write_ended(&gateway).await;

    let mut got = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(T, client.read(&mut chunk))
            .await
            .expect("the gateway ends the connection in time")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    for (at, _) in text.match_indices("HTTP/1.1 503 ") {
        assert!(
            at == 0 || text[..at].ends_with("\r\n\r\n"),
            "a 503 inside another head, after {} bytes: ...{:?}",
            at,
            &text[at.saturating_sub(40)..at + 13]
        );
    }
}
