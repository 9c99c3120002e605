//! Hostile clients at the edge: they cannot eject healthy upstreams, hold connections open
//! without a word, exhaust the gateway's connections, or slip past the framing checks.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(5);

/// Everything the gateway sends on `stream` until it closes it (or `T` passes: a failure).
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(T, stream.read_to_end(&mut all))
        .await
        .expect("the gateway closed the connection")
        .ok();
    String::from_utf8_lossy(&all).into_owned()
}

/// Send `bytes` on a fresh connection and read what comes back until the gateway closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    read_until_closed(&mut connect_and_write(addr, bytes).await).await
}

/// A gateway whose `app` pool is one echo upstream; `extra` is more of its config.
async fn echo_gateway(extra: &str) -> (tempfile::TempDir, Echo, gateway::Gateway) {
    let echo = Echo::start("app", "local").await;
    let (dir, gateway) = pool_gateway(&[echo.addr], extra).await;
    (dir, echo, gateway)
}

/// The value of a metric line `name` (labels included) on the admin listener.
async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let text = get_text(&client(), admin, "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The metric once it reaches `value`, for a count made after the client already saw the
/// connection close (a handshake timeout drops the socket before it is counted); `None`
/// answers the last value seen if it never does within 10 s.
async fn metric_reaching(admin: SocketAddr, name: &str, value: f64) -> Option<f64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = metric(admin, name).await;
        if seen == Some(value) || tokio::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_broken_body_never_counts_against_the_upstream() {
    // One failure would eject the endpoint: a client's fault must not count as one.
    let (_dir, echo, gateway) = echo_gateway(
        "health_check: { interval_ms: 0, eject_after_failures: 1, eject_for_ms: 600000 }\ntimeouts: { read_ms: 300 }\nlimits: { max_body_bytes: 1024 }\n",
    )
    .await;
    let addr = gateway.http_addrs[0];
    let head = "POST /orders HTTP/1.1\r\nHost: shop\r\nX-User-Id: 7\r\n";
    // A malformed chunk size.
    let bad_chunk = exchange(
        addr,
        format!("{head}Transfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(bad_chunk.starts_with("HTTP/1.1 400"), "{bad_chunk}");
    // A chunked body over the limit (20 KB against 1 KB).
    let mut big = format!("{head}Transfer-Encoding: chunked\r\n\r\n");
    for _ in 0..20 {
        big.push_str(&format!("400\r\n{}\r\n", "x".repeat(1024)));
    }
    big.push_str("0\r\n\r\n");
    let too_large = exchange(addr, big.as_bytes()).await;
    assert!(too_large.starts_with("HTTP/1.1 413"), "{too_large}");
    // A body that stops coming: the upstream's time runs out while the body is incomplete.
    let mut slow = connect_and_write(
        addr,
        format!("{head}Content-Length: 10\r\n\r\nab").as_bytes(),
    )
    .await;
    let slow = read_until_closed(&mut slow).await;
    assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
    // A body cut off: the client closes its side half-way.
    let mut aborted = connect_and_write(
        addr,
        format!("{head}Content-Length: 100\r\n\r\nonly ten b").as_bytes(),
    )
    .await;
    aborted.shutdown().await.expect("half-close");
    let _ = read_until_closed(&mut aborted).await;

    let admin = gateway.admin_addr;
    assert_eq!(
        metric(
            admin,
            "unitgate_client_body_errors_total{kind=\"malformed\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(
            admin,
            "unitgate_client_body_errors_total{kind=\"too_large\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric(admin, "unitgate_client_body_errors_total{kind=\"slow\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(admin, "unitgate_client_body_errors_total{kind=\"aborted\"}").await,
        Some(1.0)
    );
    let metrics = get_text(&client(), admin, "/metrics").await;
    assert!(
        !metrics.contains("unitgate_upstream_errors_total{"),
        "no upstream error was counted:\n{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "unitgate_upstream_healthy{{region=\"local\",service=\"app\",endpoint=\"{}\"}} 1",
            echo.addr
        )),
        "{metrics}"
    );
    // And a good request still goes through.
    let (status, _, _) = send(
        &client(),
        request("POST", addr, "/orders", &[("x-user-id", "7")]),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed() {
    let (_dir, _echo, gateway) = echo_gateway("timeouts: { client_header_ms: 200 }\n").await;
    let mut silent = TcpStream::connect(gateway.http_addrs[0])
        .await
        .expect("connect");
    assert_eq!(read_until_closed(&mut silent).await, "");
    assert_eq!(
        metric(
            gateway.admin_addr,
            "unitgate_client_connections_closed_total{reason=\"no_first_byte\"}"
        )
        .await,
        Some(1.0)
    );
    // A connection that has spoken is not cut by that deadline: its request is answered.
    let (status, _, _) = send(
        &client(),
        request("GET", gateway.http_addrs[0], "/x", &[("x-user-id", "1")]),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_connections_are_closed() {
    use rustls::pki_types::{CertificateDer, ServerName};

    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("key");
    let echo = Echo::start("app", "local").await;
    let table_path = dir.path().join("table.yaml");
    let table = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/minimal.yaml"),
    )
    .expect("minimal")
    .replace("127.0.0.1:9000", &echo.addr.to_string());
    std::fs::write(&table_path, table).expect("table");
    let mut config = gateway_config("local", &table_path, &dir.path().join("cache"));
    config.listen.http.clear();
    config.timeouts.client_header_ms = 200;
    config.timeouts.tls_handshake_ms = 200;
    let tls = gateway::config::TlsListen {
        address: "127.0.0.1:0".parse().expect("addr"),
        cert: cert_path,
        key: key_path,
        client_ca: None,
    };
    let listeners = gateway::Listeners {
        http: vec![],
        https: vec![(
            std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
            gateway::server::tls_config(&tls).expect("tls"),
        )],
        admin: std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
    };
    let gateway = gateway::Gateway::start(config, listeners)
        .await
        .expect("starts");
    let addr = gateway.https_addrs[0];

    // No handshake at all.
    let mut no_hello = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(read_until_closed(&mut no_hello).await, "");
    assert_eq!(
        metric_reaching(
            gateway.admin_addr,
            "unitgate_client_connections_closed_total{reason=\"tls_handshake_timeout\"}",
            1.0
        )
        .await,
        Some(1.0)
    );
    // A handshake, then nothing.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    assert_eq!(read_until_closed(&mut tls).await, "");
    assert_eq!(
        metric(
            gateway.admin_addr,
            "unitgate_client_connections_closed_total{reason=\"no_first_byte\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_address_are_capped_and_the_admin_still_answers() {
    let (_dir, _echo, gateway) = echo_gateway(
        "limits: { max_connections_per_ip: 2 }\ntimeouts: { client_header_ms: 60000 }\n",
    )
    .await;
    let addr = gateway.http_addrs[0];
    let held = [
        TcpStream::connect(addr).await.expect("connect"),
        TcpStream::connect(addr).await.expect("connect"),
    ];
    // The third from the same address is closed as soon as it is accepted.
    let mut third = TcpStream::connect(addr).await.expect("connect");
    let _ = third
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nX-User-Id: 1\r\n\r\n")
        .await;
    let answer = read_until_closed(&mut third).await;
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");
    assert_eq!(
        metric(
            gateway.admin_addr,
            "unitgate_connections_refused_total{reason=\"max_connections_per_ip\"}"
        )
        .await,
        Some(1.0),
        "the admin listener answers while the proxy is full"
    );
    // One closed, there is room again (once the gateway has seen it go).
    drop(held);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if exchange(
            addr,
            b"GET /x HTTP/1.1\r\nHost: a\r\nX-User-Id: 1\r\nConnection: close\r\n\r\n",
        )
        .await
        .starts_with("HTTP/1.1 200")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no room came back");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_framing_check_covers_requests_after_an_upgrade_that_did_not_happen() {
    let (_dir, echo, gateway) = echo_gateway("").await;
    let addr = gateway.http_addrs[0];
    let smuggled = "POST /b HTTP/1.1\r\nHost: a\r\nX-User-Id: 1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    // The upstream answers 200, not 101: the connection stays HTTP/1.
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: a\r\nX-User-Id: 1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n{smuggled}"
    );
    let answer = exchange(addr, upgrade.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("HTTP/1.1 400"), "{answer}");
    assert_eq!(
        echo.count(),
        1,
        "only the upgrade request reached the upstream"
    );
    // A CONNECT the gateway refuses.
    let connect = format!("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n{smuggled}");
    let answer = exchange(addr, connect.as_bytes()).await;
    assert!(!answer.contains("HTTP/1.1 200"), "{answer}");
    assert_eq!(echo.count(), 1, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_method_are_checked_before_routing() {
    let (_dir, echo, gateway) = echo_gateway("").await;
    let addr = gateway.http_addrs[0];
    let rest = "X-User-Id: 1\r\nConnection: close\r\n\r\n";
    for (head, status) in [
        ("GET /x HTTP/1.1\r\n", "400"),
        ("GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n", "400"),
        ("GET /x HTTP/1.1\r\nHost: a b\r\n", "400"),
        ("GET /x HTTP/1.1\r\nHost: user@a\r\n", "400"),
        ("GET http://user@a/x HTTP/1.1\r\nHost: a\r\n", "400"),
        ("get /x HTTP/1.1\r\nHost: a\r\n", "501"),
        ("BREW /x HTTP/1.1\r\nHost: a\r\n", "501"),
        (
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ /x HTTP/1.1\r\nHost: a\r\n",
            "400",
        ),
    ] {
        let answer = exchange(addr, format!("{head}{rest}").as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{head:?}: {answer}"
        );
    }
    assert_eq!(echo.count(), 0, "none of them reached the upstream");
    // Absolute form: the target's authority is the Host, whatever Host says.
    let answer = exchange(
        addr,
        format!("GET http://real.example/x HTTP/1.1\r\nHost: other.example\r\n{rest}").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // HTTP/1.0 may leave Host out.
    let answer = exchange(addr, format!("GET /x HTTP/1.0\r\n{rest}").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let received = echo.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].headers["host"], "real.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_must_agree_with_host_and_cookies_are_joined() {
    let (_dir, echo, gateway) = echo_gateway("").await;
    let mut sender = h2c(gateway.http_addrs[0]).await;
    let request = |host: Option<&str>, cookies: &[&str]| {
        let mut builder = http::Request::get("http://shop.example/x").header("x-user-id", "1");
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        for cookie in cookies {
            builder = builder.header("cookie", *cookie);
        }
        builder
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request")
    };
    let refused = sender
        .send_request(request(Some("internal.example"), &[]))
        .await
        .expect("answered");
    assert_eq!(refused.status(), 400);
    assert_eq!(echo.count(), 0);
    let joined = sender
        .send_request(request(Some("shop.example"), &["a=1", "b=2"]))
        .await
        .expect("answered");
    assert_eq!(joined.status(), 200);
    let received = echo.received();
    assert_eq!(received[0].headers["cookie"], "a=1; b=2");
    assert_eq!(received[0].headers["host"], "shop.example");
}

/// An HTTP/2 field value with whitespace at an end is malformed (RFC 9113 section 8.2.1):
/// refused, never passed on, where a strict upstream would reset the connection every other
/// request shares and the gateway would count it against a healthy endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_field_values_with_whitespace_at_an_end_are_refused() {
    let (_dir, echo, gateway) = echo_gateway("").await;
    let mut sender = h2c(gateway.http_addrs[0]).await;
    for value in [" 100m", "100m ", "\t100m"] {
        let request = http::Request::get("http://shop.example/x")
            .header("x-user-id", "1")
            .header("grpc-timeout", value)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let refused = sender.send_request(request).await.expect("answered");
        assert_eq!(refused.status(), 400, "{value:?}");
    }
    assert_eq!(echo.count(), 0, "nothing reached the upstream");
    let request = http::Request::get("http://shop.example/x")
        .header("x-user-id", "1")
        .header("x-note", "inner\tspace is fine")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    assert_eq!(
        sender
            .send_request(request)
            .await
            .expect("answered")
            .status(),
        200
    );
}

/// `*` as a target is for OPTIONS only over HTTP/2 as over HTTP/1.1: any other method with
/// it is refused (400), and reaches no upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asterisk_target_is_for_options_only_over_http2() {
    let (_dir, echo, gateway) = echo_gateway("").await;
    let tcp = tokio::net::TcpStream::connect(gateway.http_addrs[0])
        .await
        .expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("h2c");
    tokio::spawn(connection);
    let asterisk = http::Uri::builder()
        .scheme("http")
        .authority("shop.example")
        .path_and_query("*")
        .build()
        .expect("uri");
    for method in ["GET", "POST", "DELETE"] {
        let request = http::Request::builder()
            .method(method)
            .uri(asterisk.clone())
            .header("x-user-id", "1")
            .body(())
            .expect("request");
        let (answer, _) = client.send_request(request, true).expect("sent");
        let answer = answer.await.expect("answered");
        assert_eq!(answer.status(), 400, "{method} *");
    }
    assert_eq!(echo.count(), 0, "nothing reached the upstream");
    for head in ["GET * HTTP/1.1\r\n", "OPTIONS /x HTTP/1.1\r\n"] {
        let answer = exchange(
            gateway.http_addrs[0],
            format!("{head}Host: a\r\nX-User-Id: 1\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let status = if head.starts_with("GET") {
            "400"
        } else {
            "200"
        };
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{head:?}: {answer}"
        );
    }
}

/// The status of `GET /x` with `fields`, over a new HTTP/2 (h2c) connection to `addr`.
async fn h2_get(addr: SocketAddr, fields: &[(&str, &str)]) -> u16 {
    let mut sender = h2c(addr).await;
    let mut request = http::Request::get("http://shop.example/x");
    for (name, value) in fields {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let answer = sender.send_request(request).await.expect("answered");
    answer.status().as_u16()
}

/// A name with an underscore never reaches the upstream, over HTTP/1.1 or HTTP/2: servers
/// that read `_` as `-` (CGI, and those that follow it) would take `X_Unitgate_Unit` for the
/// gateway's own field and `X_Forwarded_For` for the address it vouches for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_names_with_underscores_are_dropped() {
    let (_dir, echo, gateway) = echo_gateway("").await;
    let look_alikes = [
        ("x_unitgate_unit", "u99"),
        ("X_Forwarded_For", "6.6.6.6"),
        ("x_user_id", "666"),
        ("x-real_ip", "6.6.6.6"),
    ];
    let mut fields = vec![("x-user-id", "1")];
    fields.extend(look_alikes);
    let (status, _, _) = send(
        &client(),
        request("GET", gateway.http_addrs[0], "/x", &fields),
    )
    .await;
    assert_eq!(status, 200);
    let mut h2_fields = vec![("x-user-id", "1")];
    h2_fields.extend(look_alikes);
    assert_eq!(h2_get(gateway.http_addrs[0], &h2_fields).await, 200);
    let received = echo.received();
    assert_eq!(received.len(), 2);
    for got in received {
        for (name, _) in look_alikes {
            assert!(
                !got.headers.contains_key(name),
                "{name} reached the upstream"
            );
        }
        assert_eq!(got.headers["x-forwarded-for"], "127.0.0.1");
    }
}

/// The answer's status line for `GET path` over HTTP/1.1 on a new connection, and the status
/// of the same over HTTP/2 on `sender`.
async fn get_both_ways(
    addr: SocketAddr,
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
    path: &str,
) -> (String, u16) {
    let answer = exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nX-User-Id: 1\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let h2_request = http::Request::get(format!("http://shop.example{path}"))
        .header("x-user-id", "1")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let h2_answer = sender.send_request(h2_request).await.expect("answered");
    (answer, h2_answer.status().as_u16())
}

/// Escapes that servers read differently (an encoded `/` or `\\`, a NUL, a `%` without two hex
/// digits) are refused with a 400 over HTTP/1.1 and HTTP/2; other spellings of a path reach
/// the upstream in the one form it resolves them to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_paths_are_refused_and_the_rest_normalized() {
    let (_dir, echo, gateway) = echo_gateway("").await;
    let addr = gateway.http_addrs[0];
    let mut sender = h2c(addr).await;
    for path in [
        "/a%2F..%2Fb",
        "/a%5cb",
        "/a%00.json",
        "/a%zz",
        "/a%4",
        "/pub/..;/private/x",
        "/pub/.;x/private",
        "/pub/%2e%2e;/private",
        "/pub/..%3B/private",
        "/;/private",
        "/a{b}",
        "/a\"b",
        "/a|b^c",
    ] {
        let (answer, h2_status) = get_both_ways(addr, &mut sender, path).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert_eq!(h2_status, 400, "{path} over HTTP/2");
    }
    assert_eq!(echo.count(), 0, "nothing reached the upstream");
    // Over HTTP/2 a path may hold what an HTTP/1.1 request target cannot: a backslash.
    let h2_request = http::Request::get("http://shop.example/pub/\\..\\private")
        .header("x-user-id", "1")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let answer = sender.send_request(h2_request).await.expect("answered");
    assert_eq!(answer.status(), 400, "a backslash over HTTP/2");
    assert_eq!(echo.count(), 0, "nothing reached the upstream");
    for (path, normal) in [
        ("/private/../%70rivate/./x?q=%2F", "/private/x"),
        ("/a/b/..", "/a/"),
        ("//private//x", "/private/x"),
    ] {
        let (answer, h2_status) = get_both_ways(addr, &mut sender, path).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert_eq!(h2_status, 200, "{path} over HTTP/2");
        let received = echo.received();
        let last_two = &received[received.len() - 2..];
        for got in last_two {
            assert_eq!(got.path, normal, "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_are_kept_only_from_trusted_proxies() {
    let spoof = [
        ("x-user-id", "1"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "admin.internal"),
        ("forwarded", "for=6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("cf-connecting-ip", "6.6.6.6"),
        ("x-original-url", "/order/5042"),
        ("x-rewrite-url", "/order/5042"),
        ("x-arr-clientcert", "MIIB"),
        ("x-ssl-client-cert", "MIIB"),
        ("x-client-cert", "MIIB"),
        ("x-envoy-retry-on", "5xx"),
        ("x-script-name", "/admin"),
        ("x-scheme", "https"),
        ("forwarded-for", "6.6.6.6"),
        ("x-original-host", "admin.internal"),
    ];
    for (extra, forwarded_for, proto) in [
        ("", "127.0.0.1", "http"),
        (
            "trusted_proxies: [\"127.0.0.0/8\"]\n",
            "6.6.6.6, 127.0.0.1",
            "https",
        ),
    ] {
        let (_dir, echo, gateway) = echo_gateway(extra).await;
        let (status, _, _) = send(
            &client(),
            request("GET", gateway.http_addrs[0], "/x", &spoof),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(h2_get(gateway.http_addrs[0], &spoof).await, 200);
        let trusted = !extra.is_empty();
        for got in echo.received() {
            let headers = &got.headers;
            assert_eq!(headers["x-forwarded-for"], forwarded_for, "{extra}");
            assert_eq!(headers["x-forwarded-proto"], proto, "{extra}");
            for name in [
                "x-forwarded-host",
                "forwarded",
                "x-real-ip",
                "true-client-ip",
                "cf-connecting-ip",
                "x-original-url",
                "x-rewrite-url",
                "x-arr-clientcert",
                "x-ssl-client-cert",
                "x-client-cert",
                "x-envoy-retry-on",
                "x-script-name",
                "x-scheme",
                "forwarded-for",
                "x-original-host",
            ] {
                assert_eq!(headers.contains_key(name), trusted, "{name} {extra}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_keys_are_one_length_and_unambiguous() {
    let (_dir, echo, gateway) = echo_gateway("").await;
    let addr = gateway.http_addrs[0];
    let long = "7".repeat(200);
    for (head, why) in [
        (format!("X-User-Id: {long}\r\n"), "too_long"),
        ("X-User-Id: 1\r\nX-User-Id: 2\r\n".to_owned(), "ambiguous"),
    ] {
        let answer = exchange(
            addr,
            format!("GET /x HTTP/1.1\r\nHost: a\r\n{head}Connection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains(why), "{answer}");
    }
    assert_eq!(echo.count(), 0);
}
