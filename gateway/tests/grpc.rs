//! gRPC through the gateway: pools with `protocol: h2` are reached over HTTP/2 (h2c), a real
//! tonic server behind and a tonic client in front. Unary and server-streaming calls keep
//! their trailers (the server's `grpc-status` and its own metadata) in the region and across
//! regions; a client's request trailers reach the upstream; the gateway's own answers reach a
//! gRPC client as gRPC statuses; an h2 pool's health is checked over HTTP/2; an HTTP/1.1
//! client's request, served by the gateway's own codec, crosses to them over HTTP/2 too; a
//! request an h2 upstream refuses is answered, or left unprocessed goes to the next endpoint,
//! its body too when it streamed (recorded as it went, up to a limit).

#[path = "support/grpc_echo.rs"]
mod grpc_echo;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use bytes::Bytes;
use gateway::Gateway;
use gateway::config::GatewayConfig;
use grpc_echo::{EchoReply, EchoRequest, count, request, say};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{SECRET, h2c, https_listeners, loopback_listeners, refusing_address};
use testkit::tls::TestCa;
use tonic::Code;
use tonic_prost::ProstCodec;

/// Users by where their unit lives: u1 in hz, u2 in sh, u3 (write-frozen) in sh.
const IN_HZ: &str = "1";
const IN_SH: &str = "4000";
const FROZEN: &str = "7000";

/// A raw HTTP/2 upstream: answers `/raw` with a body and trailers that repeat the request's
/// trailers (`x-echoed-<name>`) and add `x-upstream-trailer`.
async fn trailer_echo() -> SocketAddr {
    support::serve_each(serve_trailer_echo).await
}

/// [`trailer_echo`]'s HTTP/2 on one connection: each request answered with `<version> <bytes
/// of its body>` and trailers that repeat the request's (`x-echoed-<name>`) and add
/// `x-upstream-trailer`.
async fn serve_trailer_echo(stream: tokio::net::TcpStream) {
    let service = service_fn(|request: Request<Incoming>| async move {
        let version = format!("{:?}", request.version());
        let collected = request.into_body().collect().await?;
        let mut trailers = http::HeaderMap::new();
        for (name, value) in collected.trailers().into_iter().flatten() {
            let echoed =
                http::HeaderName::from_bytes(format!("x-echoed-{name}").as_bytes()).expect("name");
            trailers.insert(echoed, value.clone());
        }
        trailers.insert("x-upstream-trailer", "from-upstream".parse().expect("v"));
        let body = collected.to_bytes();
        let frames = vec![
            Ok::<_, hyper::Error>(Frame::data(Bytes::from(format!(
                "{version} {}",
                body.len()
            )))),
            Ok(Frame::trailers(trailers)),
        ];
        Ok::<_, hyper::Error>(Response::new(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Two regions, each with a gateway, a tonic echo server and a raw HTTP/2 upstream.
struct Grpc {
    hz: Gateway,
    sh: Gateway,
    servers: Vec<grpc_echo::Running>,
    _down: tokio::net::TcpSocket,
    _dir: tempfile::TempDir,
}

fn config(region: &str, table: &Path, extra: &str) -> GatewayConfig {
    let text = format!(
        "region: {region}\nlisten: {{ http: [\"127.0.0.1:0\"] }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\ntable: {{ file: {}, poll_interval_ms: 3600000 }}\nhop_secret: {SECRET}\naccess_log: false\n{extra}",
        table.display()
    );
    GatewayConfig::parse(&text, "test").expect("config")
}

impl Grpc {
    async fn start() -> Grpc {
        Grpc::start_with("").await
    }

    /// With `extra` in both gateways' configs.
    async fn start_with(extra: &str) -> Grpc {
        let dir = tempfile::tempdir().expect("tempdir");
        let (down_socket, down) = refusing_address();
        let mut servers = Vec::new();
        let mut pools = Vec::new();
        for region in ["hz", "sh"] {
            let server = grpc_echo::serve(region).await;
            let raw = trailer_echo().await;
            pools.push(format!(
                "{{ echo: {{ endpoints: [\"{}\"], protocol: h2 }}, raw: {{ endpoints: [\"{raw}\"], protocol: h2 }}, down: {{ endpoints: [\"{down}\"], protocol: h2 }} }}",
                server.addr
            ));
            servers.push(server);
        }
        let listeners = [loopback_listeners(), loopback_listeners()];
        let gateways: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.http[0].local_addr().expect("addr"))
            .collect();
        let route = |name: &str, prefix: &str| {
            format!(
                "  - {{ name: {name}, match: {{ path_prefix: {prefix} }}, service: {name}, class: C, key: [{{ header: X-User-Id }}], missing_key: reject }}\n"
            )
        };
        let table = format!(
            "version: 1\nregions:\n  - {{ name: hz, gateways: [\"{}\"], pools: {} }}\n  - {{ name: sh, gateways: [\"{}\"], pools: {} }}\nunits:\n  - {{ name: u1, center: true, slots: [[0, 3332]], region: hz }}\n  - {{ name: u2, slots: [[3333, 6665]], region: sh }}\n  - {{ name: u3, slots: [[6666, 9999]], region: sh, state: write_frozen }}\nroutes:\n{}{}{}",
            gateways[0],
            pools[0],
            gateways[1],
            pools[1],
            route("echo", "/unitgate.test.Echo/"),
            route("raw", "/raw"),
            route("down", "/unitgate.test.Down/"),
        );
        let table_path = dir.path().join("table.yaml");
        std::fs::write(&table_path, table).expect("table");
        let [hz_listeners, sh_listeners] = listeners;
        let hz = Gateway::start(
            config(
                "hz",
                &table_path,
                &format!("health_check: {{ interval_ms: 0 }}\n{extra}"),
            ),
            hz_listeners,
        )
        .await
        .expect("hz gateway");
        let sh = Gateway::start(
            config(
                "sh",
                &table_path,
                &format!("health_check: {{ interval_ms: 0 }}\n{extra}"),
            ),
            sh_listeners,
        )
        .await
        .expect("sh gateway");
        Grpc {
            hz,
            sh,
            servers,
            _down: down_socket,
            _dir: dir,
        }
    }
}

fn echo(text: &str, count: u32, fail: bool) -> EchoRequest {
    EchoRequest {
        text: text.to_owned(),
        count,
        fail,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_keep_their_trailers_in_the_region_and_across_regions() {
    let grpc = Grpc::start().await;
    let mut client = grpc_echo::client(grpc.hz.http_addrs[0]).await;
    for (user, served_by, unit) in [(IN_HZ, "hz", "u1"), (IN_SH, "sh", "u2")] {
        // Unary: the reply, from the region that owns the user's unit, which saw the
        // gateway's unit headers and `TE: trailers`; the call's OK status came in the trailers.
        let reply = say(
            &mut client,
            request(echo("hello", 0, false), &[("x-user-id", user)]),
        )
        .await
        .unwrap_or_else(|status| panic!("Say as {user}: {status:?}"));
        let EchoReply {
            text,
            served_by: by,
            metadata,
            ..
        } = reply.into_inner();
        assert_eq!((text.as_str(), by.as_str()), ("hello", served_by));
        assert_eq!(
            metadata.get("x-unitgate-unit").map(String::as_str),
            Some(unit)
        );
        assert_eq!(metadata.get("x-user-id").map(String::as_str), Some(user));
        assert_eq!(metadata.get("te").map(String::as_str), Some("trailers"));
        assert_eq!(
            metadata.get("content-type").map(String::as_str),
            Some("application/grpc")
        );
        assert!(!metadata.contains_key("connection"), "{metadata:?}");

        // Server streaming: every message, then the server's trailers: grpc-status 0 and its
        // own `x-count`.
        let (messages, end) = count(
            &mut client,
            request(echo("tick", 3, false), &[("x-user-id", user)]),
        )
        .await
        .unwrap_or_else(|status| panic!("Count as {user}: {status:?}"));
        assert_eq!(
            messages.iter().map(|m| m.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(messages.iter().all(|m| m.served_by == served_by));
        let trailers = end.unwrap_or_else(|status| panic!("Count as {user} ended {status:?}"));
        assert_eq!(
            trailers.get("x-count").and_then(|v| v.to_str().ok()),
            Some("3"),
            "{trailers:?}"
        );

        // A stream that fails after its messages: the server's status and metadata from the
        // trailers reach the client.
        let (messages, end) = count(
            &mut client,
            request(echo("tick", 2, true), &[("x-user-id", user)]),
        )
        .await
        .unwrap_or_else(|status| panic!("failing Count as {user}: {status:?}"));
        assert_eq!(messages.len(), 2);
        let status = end.expect_err("the stream ends in DATA_LOSS");
        assert_eq!(status.code(), Code::DataLoss, "{status:?}");
        assert_eq!(status.message(), "failed after the messages");
        assert_eq!(
            status
                .metadata()
                .get("x-reason")
                .and_then(|v| v.to_str().ok()),
            Some("asked")
        );
    }
    // The user in sh was served there after one hop from hz.
    let forwarded = support::get_text(&support::client(), grpc.hz.admin_addr, "/metrics").await;
    assert!(
        forwarded.contains("unitgate_cross_region_forwards_total{region=\"sh\"} 3"),
        "{forwarded}"
    );
    let _ = &grpc.sh;
    for server in grpc.servers {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_trailers_pass_through_in_the_region_and_across_regions() {
    let grpc = Grpc::start().await;
    for user in [IN_HZ, IN_SH] {
        let mut sender = h2c(grpc.hz.http_addrs[0]).await;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-client-trailer", "from-client".parse().expect("v"));
        // Fields only a header section may carry, and the route's routing-key field, are
        // dropped: an upstream that merged trailers into the head would take them as said.
        trailers.insert("x-unitgate-unit", "u9".parse().expect("v"));
        trailers.insert("x-forwarded-for", "10.6.6.6".parse().expect("v"));
        trailers.insert("x-user-id", "9999".parse().expect("v"));
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"four"))),
            Ok(Frame::trailers(trailers)),
        ];
        let request = Request::post(format!("http://{}/raw", grpc.hz.http_addrs[0]))
            .header("x-user-id", user)
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned().expect("response trailers");
        assert_eq!(collected.to_bytes(), "HTTP/2.0 4", "as {user}");
        assert_eq!(trailers["x-upstream-trailer"], "from-upstream");
        assert_eq!(
            trailers["x-echoed-x-client-trailer"], "from-client",
            "as {user}: {trailers:?}"
        );
        for dropped in ["x-unitgate-unit", "x-forwarded-for", "x-user-id"] {
            assert!(
                !trailers.contains_key(format!("x-echoed-{dropped}")),
                "as {user}: {trailers:?}"
            );
        }
    }
}

/// A POST to `/raw` as `user`, its body sent as it comes from the returned sender (the request
/// goes on until the sender is dropped).
async fn open_write(
    addr: SocketAddr,
    user: &str,
    content_type: &str,
) -> (
    tokio::sync::mpsc::UnboundedSender<Bytes>,
    tokio::task::JoinHandle<Result<Response<Incoming>, hyper::Error>>,
) {
    type Frames = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>> + Send>,
    >;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let frames: Frames = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((Ok(Frame::data(data)), rx))
    }));
    let mut sender = h2c(addr).await;
    let request = Request::post(format!("http://{addr}/raw"))
        .header("x-user-id", user)
        .header("content-type", content_type)
        .body(StreamBody::new(frames))
        .expect("request");
    (
        tx,
        tokio::spawn(async move { sender.send_request(request).await }),
    )
}

/// A write still in flight to a unit a newer table froze holds that table's report (the flip's
/// step waits on it) until its grace is over; then the gateway ends it, a gRPC call with
/// `UNAVAILABLE`. A write to a unit the table left alone goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_outlasts_its_grace_after_its_unit_froze_is_ended_as_unavailable() {
    // A bound on the test, not a wait.
    const T: Duration = Duration::from_secs(10);
    let grpc = Grpc::start_with("timeouts: { moved_write_grace_ms: 200 }\n").await;
    let addr = grpc.hz.http_addrs[0];
    let store = &grpc.hz.store;
    let (held_body, held) = open_write(addr, IN_HZ, "application/grpc").await;
    let (other_body, other) = open_write(addr, IN_SH, "application/octet-stream").await;
    held_body.send(Bytes::from_static(b"one")).expect("send");
    other_body.send(Bytes::from_static(b"one")).expect("send");
    while store.writes_in_flight().1 < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let v1 = std::fs::read_to_string(grpc._dir.path().join("table.yaml")).expect("table");
    let v2 = v1
        .replace("version: 1\n", "version: 2\n")
        .replace("region: hz }", "region: hz, state: write_frozen }");
    assert!(
        v2.contains("region: hz, state: write_frozen }"),
        "u1 freezes"
    );
    store.load_text(&v2, false, "test").expect("v2");
    assert_eq!(
        store.settled().map(|s| s.table.version()),
        Some(1),
        "the write to u1 routed by v1 holds v2 back"
    );

    let answer = tokio::time::timeout(T, held)
        .await
        .expect("ended within the test's time")
        .expect("task")
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK, "gRPC's Trailers-Only");
    assert_eq!(answer.headers()["grpc-status"], "14", "{answer:?}");
    let message = answer.headers()["grpc-message"].to_str().expect("text");
    assert!(message.contains("write ended"), "{message}");
    assert_eq!(store.settled().map(|s| s.table.version()), Some(2));
    assert_eq!(grpc.hz.metrics.writes_ended.load(SeqCst), 1);

    // u2's write was left alone: it ends when its client ends it.
    assert!(!other.is_finished(), "a write to u2 goes on");
    drop(other_body);
    let answer = tokio::time::timeout(T, other)
        .await
        .expect("answered")
        .expect("task")
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK);
    drop(held_body);
}

/// An HTTP/2 client that stops reading a write's answer leaves the gateway no send window, so
/// the answer's body is not polled; the write is still ended when its grace is over: its
/// upstream let go and the newer table vouched for, the client finding the stream reset once
/// it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_client_stops_reading_its_answer_is_ended_after_its_grace() {
    // A bound on the test, not a wait.
    const T: Duration = Duration::from_secs(10);
    let let_go = Arc::new(tokio::sync::Notify::new());
    let upstream = support::endless_answer(let_go.clone()).await;
    let (dir, gateway) =
        support::pool_gateway(&[upstream], "timeouts: { moved_write_grace_ms: 200 }\n").await;
    let store = &gateway.store;
    let tcp = tokio::net::TcpStream::connect(gateway.http_addrs[0])
        .await
        .expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2c");
    tokio::spawn(connection);
    let request = Request::post("http://gateway/orders")
        .header("x-user-id", "42")
        .body(())
        .expect("request");
    let (answer, _) = client.send_request(request, true).expect("sent");
    let answer = tokio::time::timeout(T, answer)
        .await
        .expect("answered in time")
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(store.writes_in_flight().1, 1, "the write is in flight");

    // The client reads nothing: its window fills and the gateway has none left to send in.
    support::freeze_pool_unit(dir.path(), store);
    assert_eq!(
        store.settled().map(|s| s.table.version()),
        Some(1),
        "the write routed by v1 holds v2 back"
    );
    tokio::time::timeout(T, let_go.notified())
        .await
        .expect("the upstream let go within the test's time");
    tokio::time::timeout(T, support::settled_on(store, 2))
        .await
        .expect("v2 vouched for within the test's time");
    assert_eq!(gateway.metrics.writes_ended.load(SeqCst), 1);

    // Reading again, the client finds the answer cut short.
    let mut body = answer.into_body();
    let cut = tokio::time::timeout(T, async {
        loop {
            match body.data().await {
                Some(Ok(data)) => {
                    let _ = body.flow_control().release_capacity(data.len());
                }
                Some(Err(error)) => return error,
                None => panic!("the answer ended as if whole"),
            }
        }
    })
    .await
    .expect("the reset within the test's time");
    assert!(cut.is_reset(), "{cut}");
}

/// A unary call of `path` (any method name) through `client`.
async fn call(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &'static str,
    user: Option<&str>,
) -> Result<EchoReply, tonic::Status> {
    client.ready().await.expect("ready");
    let metadata: Vec<(&'static str, &str)> = user.map(|u| ("x-user-id", u)).into_iter().collect();
    client
        .unary(
            request(echo("x", 0, false), &metadata),
            http::uri::PathAndQuery::from_static(path),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_answers_reach_grpc_clients_as_statuses() {
    let grpc = Grpc::start().await;
    let mut client = grpc_echo::client(grpc.hz.http_addrs[0]).await;
    let cases: [(&str, &'static str, Option<&str>, Code, &str); 5] = [
        (
            "no route",
            "/unitgate.test.Nowhere/Say",
            Some(IN_HZ),
            Code::Unimplemented,
            "\"error\":\"no route\"",
        ),
        (
            "no routing key",
            grpc_echo::SAY,
            None,
            Code::InvalidArgument,
            "\"error\":\"missing routing key\"",
        ),
        (
            "a write-frozen unit (a gRPC call is a POST)",
            grpc_echo::SAY,
            Some(FROZEN),
            Code::Unavailable,
            "\"error\":\"unit is write-frozen\"",
        ),
        (
            "an upstream that refuses connections",
            "/unitgate.test.Down/Say",
            Some(IN_HZ),
            Code::Unavailable,
            "\"error\":\"upstream unreachable\"",
        ),
        (
            "the same in another region, after a hop",
            "/unitgate.test.Down/Say",
            Some(IN_SH),
            Code::Unavailable,
            "\"error\":\"upstream unreachable\"",
        ),
    ];
    for (case, path, user, code, message) in cases {
        let status = call(&mut client, path, user).await.expect_err(case);
        assert_eq!(status.code(), code, "{case}: {status:?}");
        assert!(status.message().contains(message), "{case}: {status:?}");
    }
    // A plain HTTP client is answered as before.
    let http = support::client();
    let (status, _, body) = support::send(
        &http,
        support::request(
            "POST",
            grpc.hz.http_addrs[0],
            grpc_echo::SAY,
            &[("x-user-id", FROZEN)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "unit is write-frozen");
    let _ = &grpc.sh;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_pools_health_is_checked_over_http2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = grpc_echo::serve("local").await;
    let (_reserved, dead) = refusing_address();
    let table = format!(
        "version: 1\nregions: [{{ name: local, pools: {{ echo: {{ endpoints: [\"{dead}\", \"{}\"], protocol: h2 }} }} }}]\nunits: [{{ name: u1, center: true, slots: [[0, 9999]], region: local }}]\nroutes: [{{ name: echo, match: {{ path_prefix: / }}, service: echo, class: C, key: [{{ header: X-User-Id }}], missing_key: local }}]\n",
        live.addr
    );
    let table_path = dir.path().join("table.yaml");
    std::fs::write(&table_path, table).expect("table");
    // tonic answers an HTTP/2 GET of an unknown method with HTTP 200 (and grpc-status 12):
    // healthy, as the check counts it. An HTTP/1.1 GET would find it unhealthy.
    let gateway = Gateway::start(
        config(
            "local",
            &table_path,
            "health_check: { interval_ms: 50, timeout_ms: 500, path: /grpc.health.v1.Health/Check }\n",
        ),
        loopback_listeners(),
    )
    .await
    .expect("gateway");
    let healthy = |endpoint: SocketAddr, up: u8| {
        format!(
            "unitgate_upstream_healthy{{region=\"local\",service=\"echo\",endpoint=\"{endpoint}\"}} {up}"
        )
    };
    let http = support::client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = support::get_text(&http, gateway.admin_addr, "/metrics").await;
        if metrics.contains(&healthy(dead, 0)) && metrics.contains(&healthy(live.addr, 1)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checks did not tell the dead endpoint from the live one:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The dead endpoint is out of the round robin: every call is served.
    let mut client = grpc_echo::client(gateway.http_addrs[0]).await;
    for user in 0..6 {
        let user = user.to_string();
        say(
            &mut client,
            request(echo("x", 0, false), &[("x-user-id", &user)]),
        )
        .await
        .unwrap_or_else(|status| panic!("call {user}: {status:?}"));
    }
    live.stop().await;
}

/// An HTTP/2 upstream that counts its connections and answers each request after `delay`;
/// `cut` closes every connection open at that moment.
async fn counting_h2(
    delay: Duration,
) -> (
    SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<tokio::sync::Notify>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cut = std::sync::Arc::new(tokio::sync::Notify::new());
    let (counter, cutter) = (accepted.clone(), cut.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let cut = cutter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_: Request<Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    () = cut.notified() => {}
                }
            });
        }
    });
    (addr, accepted, cut)
}

fn origin_form(path: &str) -> Request<gateway::upstream::Body> {
    Request::post(path)
        .header("host", "api.example")
        .body(gateway::upstream::empty())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_gets_one_shared_connection_made_again_when_it_closes() {
    use gateway::upstream_h2::H2Upstream;

    let (addr, accepted, cut) = counting_h2(Duration::from_millis(100)).await;
    let endpoint = http::uri::Authority::try_from(addr.to_string().as_str()).expect("authority");
    let client = H2Upstream::with_connect_timeout(Duration::from_secs(1));
    let plain = std::sync::Arc::new(gateway::connect::Connector::plain());
    // Twenty requests at once, none yet connected: one connection carries them all.
    let sends = (0..20).map(|_| client.send(&endpoint, &plain, origin_form("/x")));
    for response in futures_util::future::join_all(sends).await {
        assert_eq!(response.expect("response").status(), StatusCode::OK);
    }
    assert_eq!(accepted.load(SeqCst), 1);
    client
        .send(&endpoint, &plain, origin_form("/again"))
        .await
        .expect("on the same connection");
    assert_eq!(accepted.load(SeqCst), 1);

    // The upstream closes it: the next request makes a new one.
    cut.notify_waiters();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match client.send(&endpoint, &plain, origin_form("/after")).await {
            Ok(response) => {
                assert_eq!(response.status(), StatusCode::OK);
                break;
            }
            // The close may reach the client only as this request goes out on the old
            // connection: that one fails, and is not a connect failure.
            Err(error) => assert!(!error.is_connect(), "{error}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "no new connection");
    }
    assert_eq!(accepted.load(SeqCst), 2);

    // No connection to be had: the request comes back unsent, for another endpoint.
    let (_reserved, refusing) = refusing_address();
    let refusing =
        http::uri::Authority::try_from(refusing.to_string().as_str()).expect("authority");
    let error = client
        .send(&refusing, &plain, origin_form("/x"))
        .await
        .expect_err("refused");
    assert!(error.is_connect(), "{error}");
    let unsent = error.into_unsent().expect("the request back");
    assert_eq!(unsent.uri().path(), "/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_clients_request_crosses_regions_over_http2_with_the_default_codec() {
    let grpc = Grpc::start().await;
    let http = support::client();
    for user in [IN_HZ, IN_SH] {
        let request = Request::post(format!("http://{}/raw", grpc.hz.http_addrs[0]))
            .header("x-user-id", user)
            .body(http_body_util::Full::new(Bytes::from_static(b"four")))
            .expect("request");
        let response = http.request(request).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK, "as {user}");
        assert_eq!(response.version(), http::Version::HTTP_11);
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned();
        // The upstream saw HTTP/2 and the whole body, whichever region served it.
        assert_eq!(collected.to_bytes(), "HTTP/2.0 4", "as {user}");
        let trailers = trailers.expect("the upstream's trailers, chunked");
        assert_eq!(trailers["x-upstream-trailer"], "from-upstream", "as {user}");
    }
    let forwarded = support::get_text(&http, grpc.hz.admin_addr, "/metrics").await;
    assert!(
        forwarded.contains("unitgate_cross_region_forwards_total{region=\"sh\"} 1"),
        "{forwarded}"
    );
    let _ = &grpc.sh;
}

/// gRPC across regions whose hop is mutual TLS: hz reaches sh's HTTPS listener (which demands
/// a fleet certificate) over HTTP/2 agreed by ALPN, and the calls' replies, statuses and
/// trailers come back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_cross_a_mutual_tls_hop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = TestCa::new(dir.path(), "fleet");
    let sh_cert = fleet.leaf(dir.path(), "gw-sh", &["gw.sh.test"]);
    let hz_client = fleet.leaf(dir.path(), "gw-hz", &["gw.hz.test"]);
    let servers = [grpc_echo::serve("hz").await, grpc_echo::serve("sh").await];
    let hz_listeners = loopback_listeners();
    let hz_addr = hz_listeners.http[0].local_addr().expect("addr");
    let sh_https = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let sh_addr = sh_https.local_addr().expect("addr");
    let table = format!(
        "version: 1\nregions:\n  - {{ name: hz, gateways: [\"{hz_addr}\"], pools: {{ echo: {{ endpoints: [\"{}\"], protocol: h2 }} }} }}\n  - name: sh\n    gateways:\n      endpoints: [\"{sh_addr}\"]\n      tls: {{ ca_file: {}, server_name: gw.sh.test, client_cert: {}, client_key: {} }}\n    pools: {{ echo: {{ endpoints: [\"{}\"], protocol: h2 }} }}\nunits:\n  - {{ name: u1, center: true, slots: [[0, 3332]], region: hz }}\n  - {{ name: u2, slots: [[3333, 9999]], region: sh }}\nroutes:\n  - {{ name: echo, match: {{ path_prefix: /unitgate.test.Echo/ }}, service: echo, class: C, key: [{{ header: X-User-Id }}], missing_key: reject }}\n",
        servers[0].addr,
        fleet.pem_path.display(),
        hz_client.cert_path.display(),
        hz_client.key_path.display(),
        servers[1].addr,
    );
    let table_path = dir.path().join("table.yaml");
    std::fs::write(&table_path, table).expect("table");
    let health = "health_check: { interval_ms: 0 }\n";
    let hz = Gateway::start(config("hz", &table_path, health), hz_listeners)
        .await
        .expect("hz gateway");
    let sh_listeners = https_listeners(
        sh_https,
        &sh_cert.cert_path,
        &sh_cert.key_path,
        Some(&fleet.pem_path),
    );
    let sh = Gateway::start(config("sh", &table_path, health), sh_listeners)
        .await
        .expect("sh gateway");

    let mut client = grpc_echo::client(hz_addr).await;
    let reply = say(
        &mut client,
        request(echo("over tls", 0, false), &[("x-user-id", IN_SH)]),
    )
    .await
    .unwrap_or_else(|status| panic!("Say: {status:?}"));
    let reply = reply.into_inner();
    assert_eq!(
        (reply.text.as_str(), reply.served_by.as_str()),
        ("over tls", "sh")
    );
    let (messages, end) = count(
        &mut client,
        request(echo("tick", 2, true), &[("x-user-id", IN_SH)]),
    )
    .await
    .unwrap_or_else(|status| panic!("Count: {status:?}"));
    assert_eq!(messages.len(), 2);
    assert!(messages.iter().all(|m| m.served_by == "sh"));
    let status = end.expect_err("the stream ends in DATA_LOSS");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get("x-reason")
            .and_then(|v| v.to_str().ok()),
        Some("asked")
    );
    let forwarded = support::get_text(&support::client(), hz.admin_addr, "/metrics").await;
    assert!(
        forwarded.contains("unitgate_cross_region_forwards_total{region=\"sh\"} 2"),
        "{forwarded}"
    );
    drop((hz, sh));
    for server in servers {
        server.stop().await;
    }
}

/// An HTTP/2 upstream that resets every request's stream with `reason`, its connection going
/// on; how many streams it reset (counted before the reset goes out).
async fn resetting_h2(reason: h2::Reason) -> (SocketAddr, Arc<AtomicUsize>) {
    let reset = Arc::new(AtomicUsize::new(0));
    let counter = reset.clone();
    let addr = support::serve_each(move |stream| {
        let counter = counter.clone();
        async move {
            let Ok(mut connection) = h2::server::handshake(stream).await else {
                return;
            };
            while let Some(Ok((_, mut respond))) = connection.accept().await {
                counter.fetch_add(1, SeqCst);
                respond.send_reset(reason);
            }
        }
    })
    .await;
    (addr, reset)
}

/// An HTTP/2 upstream, spoken frame by frame, that answers a request's HEADERS with a GOAWAY
/// whose last stream id is 0 (it processed none) and then waits for the client to close; how
/// many requests it turned away so (counted before the GOAWAY goes out).
async fn going_away_h2() -> (SocketAddr, Arc<AtomicUsize>) {
    let turned_away = Arc::new(AtomicUsize::new(0));
    let counter = turned_away.clone();
    let addr = support::serve_each(move |stream| {
        let counter = counter.clone();
        async move { turn_away(stream, &counter).await }
    })
    .await;
    (addr, turned_away)
}

/// Speak HTTP/2 on `stream` frame by frame until the first request's HEADERS, then answer with
/// a GOAWAY whose last stream id is 0 (counted in `turned_away` before it goes out) and wait
/// for the client to close.
async fn turn_away(mut stream: tokio::net::TcpStream, turned_away: &AtomicUsize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
    const SETTINGS_ACK: [u8; 9] = [0, 0, 0, 4, 1, 0, 0, 0, 0];
    // Length 8, type GOAWAY, stream 0; last stream id 0, NO_ERROR.
    const GOAWAY: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut preface = [0u8; 24];
    if stream.read_exact(&mut preface).await.is_err() || stream.write_all(&SETTINGS).await.is_err()
    {
        return;
    }
    let mut head = [0u8; 9];
    while stream.read_exact(&mut head).await.is_ok() {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if stream.read_exact(&mut payload).await.is_err() {
            return;
        }
        let (kind, flags) = (head[3], head[4]);
        let reply: &[u8] = match kind {
            4 if flags & 1 == 0 => &SETTINGS_ACK,
            1 => {
                turned_away.fetch_add(1, SeqCst);
                &GOAWAY
            }
            _ => continue,
        };
        if stream.write_all(reply).await.is_err() {
            return;
        }
        if kind == 1 {
            // Read on until the client closes: closing with its frames unread would reset the
            // connection, and the GOAWAY might be lost with it.
            let mut rest = [0u8; 4096];
            while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
            return;
        }
    }
}

/// One address with a draining instance behind it: its first connection turns the first
/// request away with a GOAWAY (counted), the ones after are served as [`trailer_echo`] serves
/// them.
async fn draining_then_serving_h2() -> (SocketAddr, Arc<AtomicUsize>) {
    let turned_away = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = turned_away.clone();
    let addr = support::serve_each(move |stream| {
        let (counter, first) = (counter.clone(), connections.fetch_add(1, SeqCst) == 0);
        async move {
            if first {
                return turn_away(stream, &counter).await;
            }
            serve_trailer_echo(stream).await;
        }
    })
    .await;
    (addr, turned_away)
}

/// A one-region gateway whose `app` pool (every path, keyed by X-User-Id) is the HTTP/2
/// `endpoints`, eject after one failure; its directory, which must live as long as it.
async fn h2_pool_gateway(endpoints: &[SocketAddr]) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoints = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let table = format!(
        "version: 1\nregions: [{{ name: local, pools: {{ app: {{ endpoints: [{endpoints}], protocol: h2 }} }} }}]\nunits: [{{ name: u1, center: true, slots: [[0, 9999]], region: local }}]\nroutes: [{{ name: app, match: {{ path_prefix: / }}, service: app, class: C, key: [{{ header: X-User-Id }}], missing_key: local }}]\n"
    );
    let table_path = dir.path().join("table.yaml");
    std::fs::write(&table_path, table).expect("table");
    let gateway = Gateway::start(
        config(
            "local",
            &table_path,
            "health_check: { interval_ms: 0, eject_after_failures: 1 }\n",
        ),
        loopback_listeners(),
    )
    .await
    .expect("gateway");
    (dir, gateway)
}

/// A stream the upstream resets as malformed is that one request refused, on a connection that
/// goes on: a 502 that says so, never counted against the endpoint (a client's request the
/// upstream finds malformed must not eject it), over either front end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_upstream_refuses_does_not_count_against_it() {
    let (upstream, _) = resetting_h2(h2::Reason::PROTOCOL_ERROR).await;
    let (_dir, gateway) = h2_pool_gateway(&[upstream]).await;
    let addr = gateway.http_addrs[0];
    let mut sender = h2c(addr).await;
    for _ in 0..3 {
        let (status, _, body) = support::send(
            &support::client(),
            support::request("POST", addr, "/x", &[("x-user-id", "1")]),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "HTTP/1.1: {body}");
        assert_eq!(body["error"], "upstream refused the request", "{body}");
        let over_h2 = support::request("POST", addr, "/x", &[("x-user-id", "1")]);
        let response = sender.send_request(over_h2).await.expect("answered");
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    }
    let metrics = support::get_text(&support::client(), gateway.admin_addr, "/metrics").await;
    assert!(
        !metrics.contains(&format!(
            "unitgate_upstream_errors_total{{endpoint=\"{upstream}\""
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&healthy(upstream)), "{metrics}");
}

/// The metrics line saying endpoint `upstream` of the `app` pool takes traffic.
fn healthy(upstream: SocketAddr) -> String {
    format!(
        "unitgate_upstream_healthy{{region=\"local\",service=\"app\",endpoint=\"{upstream}\"}} 1"
    )
}

/// The metrics line counting the requests endpoint `upstream` left unprocessed.
fn unprocessed(upstream: SocketAddr, n: usize) -> String {
    format!("unitgate_upstream_errors_total{{endpoint=\"{upstream}\",kind=\"unprocessed\"}} {n}")
}

/// Three POSTs of `four` from an HTTP/1.1 client, each answered by the trailer echo with the
/// body whole.
async fn posts_are_served_whole(addr: SocketAddr) {
    let http = support::client();
    for _ in 0..3 {
        let response = http.request(post_four(addr)).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body, "HTTP/2.0 4");
    }
}

/// A POST with body `four` from an HTTP/1.1 client (read whole by the codec before it goes).
fn post_four(addr: SocketAddr) -> Request<http_body_util::Full<Bytes>> {
    Request::post(format!("http://{addr}/x"))
        .header("x-user-id", "1")
        .body(http_body_util::Full::new(Bytes::from_static(b"four")))
        .expect("request")
}

/// A gRPC-style call with no message (its HEADERS end the stream) from an HTTP/2 client.
fn grpc_style(addr: SocketAddr) -> Request<http_body_util::Full<Bytes>> {
    support::request(
        "POST",
        addr,
        "/pkg.Svc/Call",
        &[
            ("x-user-id", "1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
}

/// A request an HTTP/2 upstream refuses with REFUSED_STREAM was not processed (RFC 9113
/// section 8.7): it goes to the next endpoint whatever its method, when it can be sent again
/// (a body the codec read whole, or none), and the refusing endpoint is never ejected for it
/// (it is at its concurrency limit, not failing): later requests are still tried on it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_an_h2_upstream_refuses_unprocessed_goes_to_the_next_endpoint() {
    let (refusing, refused) = resetting_h2(h2::Reason::REFUSED_STREAM).await;
    let serving = trailer_echo().await;
    let (_dir, gateway) = h2_pool_gateway(&[refusing, serving]).await;
    let addr = gateway.http_addrs[0];
    // Round robin over the two: of any two requests in a row, one is tried on the refusing
    // endpoint first (and, retried on the other, every one after it is too).
    let http = support::client();
    let before = refused.load(SeqCst);
    for _ in 0..3 {
        let response = http.request(post_four(addr)).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK, "HTTP/1.1");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        // The body went again whole.
        assert_eq!(body, "HTTP/2.0 4");
    }
    assert!(refused.load(SeqCst) > before, "HTTP/1.1: never tried first");

    let mut sender = h2c(addr).await;
    let before = refused.load(SeqCst);
    for _ in 0..3 {
        let response = sender
            .send_request(grpc_style(addr))
            .await
            .expect("answered");
        assert_eq!(response.status(), StatusCode::OK, "HTTP/2");
        let collected = response.into_body().collect().await.expect("body");
        let trailers = collected
            .trailers()
            .cloned()
            .expect("the upstream's trailers");
        assert_eq!(trailers["x-upstream-trailer"], "from-upstream");
        assert_eq!(collected.to_bytes(), "HTTP/2.0 0");
    }
    // Refused with eject_after_failures 1 and still tried: not ejected.
    assert!(refused.load(SeqCst) > before, "HTTP/2: never tried first");

    let metrics = support::get_text(&http, gateway.admin_addr, "/metrics").await;
    assert!(
        metrics.contains(&unprocessed(refusing, refused.load(SeqCst))),
        "{metrics}"
    );
    assert!(metrics.contains(&healthy(refusing)), "{metrics}");
    assert!(
        !metrics.contains("kind=\"other\"") && !metrics.contains("kind=\"connect\""),
        "{metrics}"
    );
}

/// When every endpoint leaves the request unprocessed the client hears the refusal (a `502`, or
/// gRPC's UNAVAILABLE), having had each endpoint tried and the last once more (three attempts
/// in all), whether its body was read whole, empty or streamed (recorded as it went, so it
/// goes again too); no endpoint is ejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_refuses_the_client_hears_so_and_none_is_ejected() {
    let (first, first_refused) = resetting_h2(h2::Reason::REFUSED_STREAM).await;
    let (second, second_refused) = resetting_h2(h2::Reason::REFUSED_STREAM).await;
    let (_dir, gateway) = h2_pool_gateway(&[first, second]).await;
    let addr = gateway.http_addrs[0];
    let refused = || first_refused.load(SeqCst) + second_refused.load(SeqCst);

    let (status, _, body) = support::send(&support::client(), post_four(addr)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], "upstream refused the request", "{body}");
    assert!(first_refused.load(SeqCst) >= 1 && second_refused.load(SeqCst) >= 1);
    assert_eq!(refused(), 3);

    let mut sender = h2c(addr).await;
    let response = sender
        .send_request(grpc_style(addr))
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "14", "UNAVAILABLE");
    assert_eq!(refused(), 6);

    // The body streams from an HTTP/2 client: recorded as it went, it goes again like the
    // others, three attempts in all.
    let streamed = Request::post(format!("http://{addr}/x"))
        .header("x-user-id", "1")
        .body(http_body_util::Full::new(Bytes::from_static(b"four")))
        .expect("request");
    let response = sender.send_request(streamed).await.expect("answered");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["error"], "upstream refused the request", "{body}");
    assert_eq!(refused(), 9);

    let metrics = support::get_text(&support::client(), gateway.admin_addr, "/metrics").await;
    for (upstream, n) in [(first, &first_refused), (second, &second_refused)] {
        assert!(
            metrics.contains(&unprocessed(upstream, n.load(SeqCst))),
            "{metrics}"
        );
        assert!(metrics.contains(&healthy(upstream)), "{metrics}");
    }
}

/// Requests above a GOAWAY's last stream id were not processed either: a POST the upstream
/// turned away so is served by the next endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_a_goaway_left_unprocessed_goes_to_the_next_endpoint() {
    let (going_away, turned_away) = going_away_h2().await;
    let serving = trailer_echo().await;
    let (_dir, gateway) = h2_pool_gateway(&[going_away, serving]).await;
    let addr = gateway.http_addrs[0];
    posts_are_served_whole(addr).await;
    assert!(turned_away.load(SeqCst) > 0, "never tried first");
    let metrics = support::get_text(&support::client(), gateway.admin_addr, "/metrics").await;
    assert!(
        metrics.contains(&unprocessed(going_away, turned_away.load(SeqCst))),
        "{metrics}"
    );
}

/// A draining instance behind a pool's one address (a Service's, say) turns a request away with
/// a GOAWAY: the request goes again on a new connection, which an instance still there serves,
/// and so do the requests after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_a_goaway_left_unprocessed_goes_again_on_a_new_connection() {
    let (address, turned_away) = draining_then_serving_h2().await;
    let (_dir, gateway) = h2_pool_gateway(&[address]).await;
    let addr = gateway.http_addrs[0];
    posts_are_served_whole(addr).await;
    assert_eq!(turned_away.load(SeqCst), 1);
    let metrics = support::get_text(&support::client(), gateway.admin_addr, "/metrics").await;
    assert!(metrics.contains(&unprocessed(address, 1)), "{metrics}");
    assert!(metrics.contains(&healthy(address)), "{metrics}");
}

/// The body [`frames`] makes.
type Frames = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
>;

/// A request body of `data` frames, then `trailer` (`x-client-trailer`) when given, as an
/// HTTP/2 client streams it.
fn frames(data: &[&'static str], trailer: Option<&str>) -> Frames {
    let mut frames: Vec<_> = data
        .iter()
        .map(|d| Ok(Frame::data(Bytes::from_static(d.as_bytes()))))
        .collect();
    if let Some(value) = trailer {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-client-trailer", value.parse().expect("value"));
        frames.push(Ok(Frame::trailers(trailers)));
    }
    StreamBody::new(futures_util::stream::iter(frames))
}

/// A POST of `body` from an HTTP/2 client; gRPC-style (`content-type: application/grpc`,
/// `te: trailers`) when `grpc`.
fn streamed_post<B>(addr: SocketAddr, body: B, grpc: bool) -> Request<B> {
    let mut request = Request::post(format!("http://{addr}/pkg.Svc/Call")).header("x-user-id", "1");
    if grpc {
        request = request
            .header("content-type", "application/grpc")
            .header("te", "trailers");
    }
    request.body(body).expect("request")
}

/// A message and its client trailer, gRPC-style: the message is 5 bytes.
fn grpc_message() -> Frames {
    frames(&["hel", "lo"], Some("from-client"))
}

/// The status, body and trailers of `response`.
async fn read(response: Response<Incoming>) -> (StatusCode, Bytes, Option<http::HeaderMap>) {
    let status = response.status();
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned();
    (status, collected.to_bytes(), trailers)
}

/// The gauge line of the bytes of request bodies the gateway holds.
fn buffered(bytes: usize) -> String {
    format!("unitgate_buffered_body_bytes {bytes}\n")
}

/// A request body an HTTP/2 client streams, that a POST with a body or a gRPC call carries,
/// left unprocessed (REFUSED_STREAM) by the first endpoint: recorded as it went, it goes to the
/// next one whole, trailers and all, and the copy is let go once answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_an_h2_upstream_refuses_unprocessed_goes_to_the_next_endpoint_whole() {
    let (refusing, refused) = resetting_h2(h2::Reason::REFUSED_STREAM).await;
    let serving = trailer_echo().await;
    let (_dir, gateway) = h2_pool_gateway(&[refusing, serving]).await;
    let addr = gateway.http_addrs[0];
    let mut sender = h2c(addr).await;
    // Round robin over the two: of any two requests in a row, one is tried on the refusing
    // endpoint first.
    let before = refused.load(SeqCst);
    for _ in 0..3 {
        let request = streamed_post(addr, frames(&["fo", "ur"], None), false);
        let response = sender.send_request(request).await.expect("answered");
        let (status, body, _) = read(response).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        assert_eq!(body, "HTTP/2.0 4");
    }
    assert!(refused.load(SeqCst) > before, "POST: never tried first");

    let before = refused.load(SeqCst);
    for _ in 0..3 {
        let request = streamed_post(addr, grpc_message(), true);
        let response = sender.send_request(request).await.expect("answered");
        let (status, body, trailers) = read(response).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        assert_eq!(body, "HTTP/2.0 5");
        let trailers = trailers.expect("the upstream's trailers");
        assert_eq!(trailers["x-echoed-x-client-trailer"], "from-client");
        assert_eq!(trailers["x-upstream-trailer"], "from-upstream");
    }
    assert!(refused.load(SeqCst) > before, "gRPC: never tried first");

    let metrics = support::get_text(&support::client(), gateway.admin_addr, "/metrics").await;
    assert!(
        metrics.contains(&unprocessed(refusing, refused.load(SeqCst))),
        "{metrics}"
    );
    assert!(metrics.contains(&healthy(refusing)), "{metrics}");
    assert!(metrics.contains(&buffered(0)), "{metrics}");
}

/// The same behind one address whose first connection goes away (GOAWAY): the streamed body
/// goes again whole on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_a_goaway_left_unprocessed_goes_again_on_a_new_connection() {
    for grpc in [false, true] {
        let (address, turned_away) = draining_then_serving_h2().await;
        let (_dir, gateway) = h2_pool_gateway(&[address]).await;
        let addr = gateway.http_addrs[0];
        let mut sender = h2c(addr).await;
        let body = if grpc {
            grpc_message()
        } else {
            frames(&["fo", "ur"], None)
        };
        let response = sender
            .send_request(streamed_post(addr, body, grpc))
            .await
            .expect("answered");
        let (status, body, trailers) = read(response).await;
        assert_eq!(status, StatusCode::OK, "gRPC {grpc}: {body:?}");
        assert_eq!(turned_away.load(SeqCst), 1, "gRPC {grpc}");
        if grpc {
            assert_eq!(body, "HTTP/2.0 5");
            let trailers = trailers.expect("the upstream's trailers");
            assert_eq!(trailers["x-echoed-x-client-trailer"], "from-client");
        } else {
            assert_eq!(body, "HTTP/2.0 4");
        }
        let metrics = support::get_text(&support::client(), gateway.admin_addr, "/metrics").await;
        assert!(metrics.contains(&unprocessed(address, 1)), "{metrics}");
        assert!(metrics.contains(&buffered(0)), "{metrics}");
    }
}

/// An HTTP/2 upstream that reads `bytes` of each request's body (or to its end, if shorter),
/// then resets the stream with REFUSED_STREAM — the first `refusals` streams; the ones after
/// are served as [`trailer_echo`] serves them (`served <bytes>`). How many it refused (counted
/// before the reset goes out, and told each time).
async fn refusing_after_reading_h2(
    bytes: usize,
    refusals: usize,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<tokio::sync::Notify>) {
    let refused = Arc::new(AtomicUsize::new(0));
    let told = Arc::new(tokio::sync::Notify::new());
    let streams = Arc::new(AtomicUsize::new(0));
    let (counter, tell) = (refused.clone(), told.clone());
    let addr = support::serve_each(move |stream| {
        let (counter, tell, streams) = (counter.clone(), tell.clone(), streams.clone());
        async move {
            let Ok(mut connection) = h2::server::handshake(stream).await else {
                return;
            };
            while let Some(Ok((request, respond))) = connection.accept().await {
                let refuse = streams.fetch_add(1, SeqCst) < refusals;
                let (counter, tell) = (counter.clone(), tell.clone());
                tokio::spawn(async move {
                    let mut body = request.into_body();
                    if refuse {
                        let mut respond = respond;
                        let mut seen = 0;
                        while seen < bytes {
                            let Some(Ok(chunk)) = body.data().await else {
                                break;
                            };
                            let _ = body.flow_control().release_capacity(chunk.len());
                            seen += chunk.len();
                        }
                        counter.fetch_add(1, SeqCst);
                        tell.notify_one();
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    } else {
                        echo_h2(body, respond).await;
                    }
                });
            }
        }
    })
    .await;
    (addr, refused, told)
}

/// Answer a stream as [`trailer_echo`] does, with `served <bytes of its body>`.
async fn echo_h2(mut body: h2::RecvStream, mut respond: h2::server::SendResponse<Bytes>) {
    let mut len = 0;
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        len += chunk.len();
    }
    let received = body.trailers().await.ok().flatten();
    let mut trailers = http::HeaderMap::new();
    for (name, value) in received.iter().flatten() {
        let echoed =
            http::HeaderName::from_bytes(format!("x-echoed-{name}").as_bytes()).expect("name");
        trailers.insert(echoed, value.clone());
    }
    trailers.insert("x-upstream-trailer", "from-upstream".parse().expect("v"));
    if let Ok(mut send) = respond.send_response(Response::new(()), false) {
        let _ = send.send_data(Bytes::from(format!("served {len}")), false);
        let _ = send.send_trailers(trailers);
    }
}

/// A frame of a [`fed_body`].
type Fed = Result<Frame<Bytes>, std::convert::Infallible>;

/// What feeds a [`fed_body`].
type Feed = tokio::sync::mpsc::UnboundedSender<Fed>;

/// A [`fed_body`]'s frames as they come.
type FedFrames = std::pin::Pin<Box<dyn futures_util::Stream<Item = Fed> + Send>>;

/// A request body the test feeds frame by frame, open until its feed is dropped.
fn fed_body() -> (Feed, StreamBody<FedFrames>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    (tx, StreamBody::new(Box::pin(stream)))
}

/// A body the client sends a first message of, and then, once the upstream has refused the
/// stream, the rest: the request goes again with the copy, then what came after it, trailers
/// included; the copy is let go once answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_refused_midway_goes_again_with_what_came_after() {
    let (address, refused, told) = refusing_after_reading_h2(1, 1).await;
    let (_dir, gateway) = h2_pool_gateway(&[address]).await;
    let addr = gateway.http_addrs[0];
    let (tx, body) = fed_body();
    let mut sender = h2c(addr).await;
    let response = tokio::spawn(sender.send_request(streamed_post(addr, body, true)));
    let send = |frame: Frame<Bytes>| {
        tx.send(Ok(frame)).expect("the body is read");
    };
    send(Frame::data(Bytes::from_static(b"hel")));
    told.notified().await;
    assert_eq!(refused.load(SeqCst), 1);
    send(Frame::data(Bytes::from_static(b"lo")));
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-client-trailer", "from-client".parse().expect("value"));
    send(Frame::trailers(trailers));
    drop(tx);
    let response = response.await.expect("task").expect("answered");
    let (status, body, trailers) = read(response).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(body, "served 5");
    let trailers = trailers.expect("the upstream's trailers");
    assert_eq!(trailers["x-echoed-x-client-trailer"], "from-client");
    assert_eq!(refused.load(SeqCst), 1);
    let metrics = support::get_text(&support::client(), gateway.admin_addr, "/metrics").await;
    assert!(metrics.contains(&unprocessed(address, 1)), "{metrics}");
    assert!(metrics.contains(&buffered(0)), "{metrics}");
}

/// A streamed body is kept to be sent again only up to 64 KiB: past that, a request left
/// unprocessed is refused (`502`) after one attempt, where a small one went three times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_past_the_limit_cannot_go_again() {
    let (address, refused, _) = refusing_after_reading_h2(usize::MAX, usize::MAX).await;
    let (_dir, gateway) = h2_pool_gateway(&[address]).await;
    let addr = gateway.http_addrs[0];
    let mut sender = h2c(addr).await;
    let refusal = |response: (StatusCode, Bytes, Option<http::HeaderMap>)| {
        let (status, body, _) = response;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["error"], "upstream refused the request", "{body}");
        body["detail"].as_str().expect("detail").to_owned()
    };

    let small = Bytes::from_static(b"four");
    let request = streamed_post(addr, http_body_util::Full::new(small), false);
    let response = sender.send_request(request).await.expect("answered");
    let detail = refusal(read(response).await);
    assert_eq!(refused.load(SeqCst), 3, "went again: {detail}");

    let large = Bytes::from(vec![b'x'; 100 * 1024]);
    let request = streamed_post(addr, http_body_util::Full::new(large), false);
    let response = sender.send_request(request).await.expect("answered");
    let detail = refusal(read(response).await);
    assert_eq!(refused.load(SeqCst), 4, "went once: {detail}");
    assert!(detail.contains("past what is kept"), "{detail}");

    let metrics = support::get_text(&support::client(), gateway.admin_addr, "/metrics").await;
    assert!(metrics.contains(&unprocessed(address, 4)), "{metrics}");
    assert!(metrics.contains(&buffered(0)), "{metrics}");
}

/// An HTTP/2 upstream that, on each request, reads the body's first chunk, tells `got`, waits
/// for `answer`, then answers and echoes each further chunk as it comes: a bidirectional
/// stream.
async fn answering_when_told_h2() -> (
    SocketAddr,
    Arc<tokio::sync::Notify>,
    Arc<tokio::sync::Notify>,
) {
    let got = Arc::new(tokio::sync::Notify::new());
    let answer = Arc::new(tokio::sync::Notify::new());
    let (tell, told) = (got.clone(), answer.clone());
    let addr = support::serve_each(move |stream| {
        let (tell, told) = (tell.clone(), told.clone());
        async move {
            let Ok(mut connection) = h2::server::handshake(stream).await else {
                return;
            };
            while let Some(Ok((request, mut respond))) = connection.accept().await {
                let (tell, told) = (tell.clone(), told.clone());
                tokio::spawn(async move {
                    let mut body = request.into_body();
                    let Some(Ok(first)) = body.data().await else {
                        return;
                    };
                    let _ = body.flow_control().release_capacity(first.len());
                    tell.notify_one();
                    told.notified().await;
                    let Ok(mut send) = respond.send_response(Response::new(()), false) else {
                        return;
                    };
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        let _ = send.send_data(chunk, false);
                    }
                    let _ = send.send_data(Bytes::new(), true);
                });
            }
        }
    })
    .await;
    (addr, got, answer)
}

/// The copy of a streamed body is held (and counted against `limits.max_buffered_body_bytes`)
/// only until the upstream answers; the body streams on both ways without waiting for its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_bodys_copy_is_let_go_once_the_upstream_answers() {
    let (address, got, answer) = answering_when_told_h2().await;
    let (_dir, gateway) = h2_pool_gateway(&[address]).await;
    let addr = gateway.http_addrs[0];
    let (tx, body) = fed_body();
    let mut sender = h2c(addr).await;
    let response = tokio::spawn(sender.send_request(streamed_post(addr, body, true)));
    let send = |data: &'static [u8]| {
        tx.send(Ok(Frame::data(Bytes::from_static(data))))
            .expect("the body is read");
    };
    let http = support::client();
    send(b"ping");
    got.notified().await;
    let metrics = support::get_text(&http, gateway.admin_addr, "/metrics").await;
    // The copy's four bytes and its entry.
    let held: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("unitgate_buffered_body_bytes "))
        .and_then(|value| value.parse().ok())
        .expect("the gauge");
    assert!((4..1024).contains(&held), "held until answered: {metrics}");
    answer.notify_one();
    let response = response.await.expect("task").expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = support::get_text(&http, gateway.admin_addr, "/metrics").await;
    assert!(metrics.contains(&buffered(0)), "let go: {metrics}");
    // The request's body is still open, and the answer streams.
    let mut body = response.into_body();
    send(b"pong");
    let frame = body.frame().await.expect("a frame").expect("data");
    assert_eq!(frame.into_data().expect("data"), "pong");
    drop(tx);
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the answer ends well");
        assert!(frame.into_data().is_ok_and(|d| d.is_empty()));
    }
}
