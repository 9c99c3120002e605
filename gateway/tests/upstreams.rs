//! Upstream handling: retries within the region, ejection, timeouts, protocol upgrades.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use gateway::Gateway;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway whose `app` pool is a dead endpoint (a bound port that refuses connections) and
/// then a live echo upstream; `health` is the gateway's health-check config.
struct DeadThenLive {
    gateway: Gateway,
    live: Echo,
    dead: SocketAddr,
    _reserved: tokio::net::TcpSocket,
    _dir: tempfile::TempDir,
}

async fn dead_then_live(health: &str) -> DeadThenLive {
    let live = Echo::start("app", "local").await;
    let (reserved, dead) = refusing_address();
    let (dir, gateway) = pool_gateway(&[dead, live.addr], health).await;
    DeadThenLive {
        gateway,
        live,
        dead,
        _reserved: reserved,
        _dir: dir,
    }
}

/// The errors of `kind` the gateway counted against `endpoint` (0 before the first), and the
/// metrics they were read from.
async fn upstream_errors(gateway: &Gateway, endpoint: SocketAddr, kind: &str) -> (u64, String) {
    let metrics = get_text(&client(), gateway.admin_addr, "/metrics").await;
    let series =
        format!("unitgate_upstream_errors_total{{endpoint=\"{endpoint}\",kind=\"{kind}\"}} ");
    let count = metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (count, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_retry_on_connect_failure_and_dead_endpoints_are_ejected() {
    let DeadThenLive {
        gateway,
        live,
        dead,
        ..
    } = dead_then_live(
        "health_check: { interval_ms: 0, eject_after_failures: 2, eject_for_ms: 600000 }\n",
    )
    .await;
    let addr = gateway.http_addrs[0];
    let client = client();
    for i in 0..10 {
        let (status, _, body) = send(
            &client,
            request("GET", addr, "/x", &[("x-user-id", &i.to_string())]),
        )
        .await;
        assert_eq!(status, 200, "GET {i}: {body}");
    }
    assert_eq!(live.count(), 10);
    // Round robin met the dead endpoint, retried on the live one, and after two connect
    // failures ejected it: no request reaches it any more.
    let (failures, metrics) = upstream_errors(&gateway, dead, "connect").await;
    assert_eq!(failures, 2, "{metrics}");
    assert!(
        metrics.contains(&format!(
            "unitgate_upstream_healthy{{region=\"local\",service=\"app\",endpoint=\"{dead}\"}} 0"
        )),
        "{metrics}"
    );
    for i in 0..10 {
        let (status, _, _) = send(
            &client,
            request("POST", addr, "/x", &[("x-user-id", &i.to_string())]),
        )
        .await;
        assert_eq!(status, 200, "POST after ejection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_with_a_body_is_retried_whole() {
    let DeadThenLive {
        gateway,
        live,
        dead,
        ..
    } = dead_then_live("health_check: { interval_ms: 0, eject_after_failures: 100 }\n").await;
    let client = client();
    // Round robin alternates, so one of the two starts on the dead endpoint.
    for i in 0..2 {
        let mut put = request("PUT", gateway.http_addrs[0], "/x", &[("x-user-id", "7")]);
        *put.body_mut() = Full::new(Bytes::from(format!("payload-{i}")));
        let (status, _, body) = send(&client, put).await;
        assert_eq!(status, 200, "PUT {i}: {body}");
    }
    let received = live.received();
    assert_eq!(received.len(), 2);
    for r in &received {
        assert_eq!(r.method, "PUT");
        assert_eq!(r.headers["content-length"], "9", "the body went on whole");
    }
    // Each attempt moves the round robin on: at least one of the two met the dead endpoint.
    let (failures, metrics) = upstream_errors(&gateway, dead, "connect").await;
    assert!(failures >= 1, "{metrics}");
}

/// An upstream that reads a request's head and never answers: it closes the connection
/// (`hang_up`), or holds it open until the gateway closes it.
async fn not_answering(hang_up: bool) -> SocketAddr {
    serve_each(move |mut stream| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
            if hang_up && head.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await
}

/// A broken exchange gets the same reply, and counts the same against the endpoint, whichever
/// front end the request came through: the codec's for HTTP/1.1, hyper's for HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_exchange_gets_one_reply_over_http1_and_http2() {
    let upstream = not_answering(true).await;
    let (_dir, gateway) = pool_gateway(
        &[upstream],
        "health_check: { interval_ms: 0, eject_after_failures: 100 }\n",
    )
    .await;
    let addr = gateway.http_addrs[0];
    let (status, _, body) = send(
        &client(),
        request("POST", addr, "/x", &[("x-user-id", "1")]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "HTTP/1.1: {body}");
    assert_eq!(
        body["error"], "upstream exchange failed",
        "HTTP/1.1: {body}"
    );
    assert_eq!(body["upstream"], upstream.to_string(), "HTTP/1.1: {body}");

    let mut sender = h2c(addr).await;
    let request = request("POST", addr, "/x", &[("x-user-id", "1")]);
    let response = sender.send_request(request).await.expect("answered");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(body["error"], "upstream exchange failed", "HTTP/2: {body}");
    assert_eq!(body["upstream"], upstream.to_string(), "HTTP/2: {body}");

    let (errors, metrics) = upstream_errors(&gateway, upstream, "other").await;
    assert_eq!(errors, 2, "{metrics}");
}

/// A client's own deadline (`grpc-timeout`) shorter than the gateway's read timeout ends the
/// request when it runs out: a `504` saying so (`DEADLINE_EXCEEDED` for a gRPC client), counted
/// as the client's, never against the upstream, over either front end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_grpc_timeout_ends_the_request_without_blaming_the_upstream() {
    let upstream = not_answering(false).await;
    let (_dir, gateway) = pool_gateway(
        &[upstream],
        "health_check: { interval_ms: 0, eject_after_failures: 1 }\n",
    )
    .await;
    let addr = gateway.http_addrs[0];
    let (status, _, body) = send(
        &client(),
        request(
            "GET",
            addr,
            "/x",
            // Given twice, the first counts, as the HTTP/2 front end reads it.
            &[
                ("x-user-id", "1"),
                ("grpc-timeout", "100m"),
                ("grpc-timeout", "5000m"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "HTTP/1.1: {body}");
    assert_eq!(
        body["error"], "the client's deadline (grpc-timeout) ran out",
        "HTTP/1.1: {body}"
    );
    assert_eq!(body["deadline_ms"], 100, "HTTP/1.1: {body}");

    let mut sender = h2c(addr).await;
    let grpc_request = request(
        "POST",
        addr,
        "/pkg.Service/Method",
        &[
            ("x-user-id", "1"),
            ("content-type", "application/grpc"),
            ("grpc-timeout", "100000u"),
        ],
    );
    let response = sender.send_request(grpc_request).await.expect("answered");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a gRPC status rides on a 200"
    );
    assert_eq!(response.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED");

    let metrics = get_text(&client(), gateway.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("unitgate_client_deadlines_exceeded_total 2"),
        "{metrics}"
    );
    let (timeouts, metrics) = upstream_errors(&gateway, upstream, "timeout").await;
    assert_eq!(timeouts, 0, "{metrics}");
    assert!(
        metrics.contains(&format!(
            "unitgate_upstream_healthy{{region=\"local\",service=\"app\",endpoint=\"{upstream}\"}} 1"
        )),
        "{metrics}"
    );

    // A client deadline later than the gateway's read timeout: the gateway's runs out first,
    // and that is the upstream's doing.
    let (_dir, gateway) = pool_gateway(
        &[upstream],
        "health_check: { interval_ms: 0, eject_after_failures: 100 }\ntimeouts: { read_ms: 100 }\n",
    )
    .await;
    let (status, _, body) = send(
        &client(),
        request(
            "GET",
            gateway.http_addrs[0],
            "/x",
            &[("x-user-id", "1"), ("grpc-timeout", "10S")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["error"], "upstream timed out", "{body}");
    let (timeouts, metrics) = upstream_errors(&gateway, upstream, "timeout").await;
    assert_eq!(timeouts, 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_not_retried() {
    let (_reserved, dead) = refusing_address();
    let (_dir, gateway) = pool_gateway(&[dead], "health_check: { interval_ms: 0 }\n").await;
    let (status, _, body) = send(
        &client(),
        request("POST", gateway.http_addrs[0], "/x", &[("x-user-id", "1")]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"], "upstream unreachable");
    let (failures, metrics) = upstream_errors(&gateway, dead, "connect").await;
    assert_eq!(failures, 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstreams_time_out_with_504() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let (_dir, gateway) = pool_gateway(
        &[silent_addr],
        "timeouts: { read_ms: 200 }\nhealth_check: { interval_ms: 0 }\n",
    )
    .await;
    let (status, _, body) = send(
        &client(),
        request("GET", gateway.http_addrs[0], "/x", &[("x-user-id", "1")]),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["error"], "upstream timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_upgrades_pass_through() {
    // An upstream that switches to an echo protocol.
    let upstream = serve_each(|stream| async move {
        let service = service_fn(|mut request: Request<Incoming>| async move {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 64];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response
                .headers_mut()
                .insert("upgrade", http::HeaderValue::from_static("echo"));
            response
                .headers_mut()
                .insert("connection", http::HeaderValue::from_static("upgrade"));
            Ok::<_, Infallible>(response)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades()
            .await;
    })
    .await;
    let (_dir, gateway) = pool_gateway(&[upstream], "health_check: { interval_ms: 0 }\n").await;
    let mut stream = connect_and_write(
        gateway.http_addrs[0],
        b"GET /ws HTTP/1.1\r\nHost: x\r\nX-User-Id: 7\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.expect("head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    stream.write_all(b"ping").await.expect("write");
    let mut echoed = [0u8; 4];
    stream.read_exact(&mut echoed).await.expect("echo");
    assert_eq!(&echoed, b"ping");
}

/// An upstream that counts the connections it accepted; `/empty` answers with no body,
/// `/chunked` with a streamed one, anything else with a fixed-length one.
async fn counting_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let service = service_fn(|request: Request<Incoming>| async move {
                let body = match request.uri().path() {
                    "/empty" => http_body_util::Either::Left(Full::new(Bytes::new())),
                    "/chunked" => http_body_util::Either::Right(http_body_util::StreamBody::new(
                        futures_util::stream::iter([
                            Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from_static(
                                b"one ",
                            ))),
                            Ok(hyper::body::Frame::data(Bytes::from_static(b"two"))),
                        ]),
                    )),
                    _ => http_body_util::Either::Left(Full::new(Bytes::from_static(b"fixed body"))),
                };
                Ok::<_, Infallible>(Response::new(body))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_whatever_the_body() {
    let (upstream, accepted) = counting_upstream().await;
    // One worker: each worker keeps its own upstream connections.
    let (_dir, gateway) = pool_gateway(
        &[upstream],
        "health_check: { interval_ms: 0 }\nthreads: 1\n",
    )
    .await;
    let addr = gateway.http_addrs[0];
    let client = client();
    for path in ["/fixed", "/empty", "/chunked"] {
        for i in 0..10 {
            let (status, _, _) = send(
                &client,
                request("GET", addr, path, &[("x-user-id", &i.to_string())]),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }
    }
    // Sequential requests: one connection carried all 30.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// An upstream whose response body is eight chunks, 150 ms apart.
async fn trickling_upstream() -> SocketAddr {
    serve_each(|stream| async move {
        let service = service_fn(|_: Request<Incoming>| async {
            let chunks = futures_util::stream::unfold(0u8, |i| async move {
                if i == 8 {
                    return None;
                }
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                let frame = hyper::body::Frame::data(Bytes::from(format!("tick{i}\n")));
                Some((Ok::<_, Infallible>(frame), i + 1))
            });
            Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(chunks)))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// Read until the peer closes; how long that took.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> std::time::Duration {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("still open after 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed_but_slow_bodies_stream_on() {
    let upstream = trickling_upstream().await;
    let (_dir, gateway) = pool_gateway(
        &[upstream],
        "health_check: { interval_ms: 0 }\ntimeouts: { client_header_ms: 300 }\n",
    )
    .await;
    let addr = gateway.http_addrs[0];

    // A head that never ends.
    let mut slow = connect_and_write(addr, b"GET /x HTTP/1.1\r\nHost: shop\r\n").await;
    let waited = until_closed(&mut slow).await;
    assert!(
        waited >= std::time::Duration::from_millis(250),
        "closed too soon: {waited:?}"
    );

    // A response body that takes 1.2 s, four times the header timeout, arrives whole; then
    // the idle keep-alive connection is closed.
    let mut client = connect_and_write(
        addr,
        b"GET /x HTTP/1.1\r\nHost: shop\r\nX-User-Id: 1\r\n\r\n",
    )
    .await;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("body keeps coming")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-body: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("tick7"), "{text}");
    let idle = until_closed(&mut client).await;
    assert!(
        idle >= std::time::Duration::from_millis(250),
        "closed too soon: {idle:?}"
    );
}

/// An upstream whose answers to `/slow` stop after their first 5 bytes until `release` is
/// notified (once per answer); other paths are answered whole at once.
async fn streaming_slowly(release: Arc<tokio::sync::Notify>) -> SocketAddr {
    serve_each(move |mut stream| {
        let release = release.clone();
        async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    continue;
                };
                let slow = head.starts_with(b"GET /slow ");
                head.drain(..end + 4);
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello";
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                if slow {
                    release.notified().await;
                }
                if stream.write_all(b"world").await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// A unit's concurrency limit counts a request in flight until its answer is all sent, on
/// either front end: while one request's answer still streams, another for the same unit is
/// refused, whichever protocol each came over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_in_flight_until_its_answer_is_all_sent() {
    let release = Arc::new(tokio::sync::Notify::new());
    let upstream = streaming_slowly(release.clone()).await;
    let (_dir, gateway) = pool_gateway(&[upstream], "health_check: { interval_ms: 0 }\n").await;
    let table = format!(
        "version: 2\nregions: [{{ name: local, pools: {{ app: [\"{upstream}\"] }} }}]\nunits: [{{ name: u1, center: true, slots: [[0, 9999]], region: local, limits: {{ concurrency: 1 }} }}]\nroutes: [{{ name: app, match: {{ path_prefix: / }}, service: app, class: C, key: [{{ header: X-User-Id }}], missing_key: local }}]\n"
    );
    gateway
        .store
        .load_text(&table, false, "test")
        .expect("applied");
    let addr = gateway.http_addrs[0];
    let get_h1 = || async {
        send(
            &client(),
            request("GET", addr, "/fast", &[("x-user-id", "1")]),
        )
        .await
    };

    // Over HTTP/2 (hyper's front end): its answer's head is here, its body is not.
    let mut sender = h2c(addr).await;
    let slow = request("GET", addr, "/slow", &[("x-user-id", "1")]);
    let response = sender.send_request(slow).await.expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    let (status, _, body) = get_h1().await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["limit"], "concurrency", "{body}");
    release.notify_one();
    let whole = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&whole[..], b"helloworld");
    let (status, _, body) = get_h1().await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Over HTTP/1.1 (the codec): the same, the other way round.
    let mut slow = connect_and_write(
        addr,
        b"GET /slow HTTP/1.1\r\nHost: a\r\nX-User-Id: 1\r\n\r\n",
    )
    .await;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.ends_with(b"hello") {
        let n = slow.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let fast = request("GET", addr, "/fast", &[("x-user-id", "1")]);
    let refused = sender.send_request(fast).await.expect("answered");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    release.notify_one();
    while !got.ends_with(b"helloworld") {
        let n = slow.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
}

/// A client's deadline goes on to the upstream as the time left of it, over either front end:
/// the upstream stops when the client has stopped waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_time_left_of_the_clients_deadline() {
    let echo = Echo::start("app", "local").await;
    let (_dir, gateway) = pool_gateway(&[echo.addr], "health_check: { interval_ms: 0 }\n").await;
    let addr = gateway.http_addrs[0];
    let (status, _, body) = send(
        &client(),
        request(
            "GET",
            addr,
            "/x",
            &[("x-user-id", "1"), ("grpc-timeout", "10S")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut sender = h2c(addr).await;
    let over_h2 = request(
        "GET",
        addr,
        "/x",
        &[("x-user-id", "1"), ("grpc-timeout", "10000000u")],
    );
    let answered = sender.send_request(over_h2).await.expect("answered");
    assert_eq!(answered.status(), StatusCode::OK);
    let received = echo.received();
    assert_eq!(received.len(), 2);
    for seen in &received {
        let left = &seen.headers["grpc-timeout"];
        let millis: u64 = left
            .strip_suffix('m')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{left:?}"));
        assert!(millis > 0 && millis <= 10_000, "{left:?}");
    }
}
