//! Table swaps under load, request-smuggling framing, TLS with HTTP/2.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The base table with version `version` and unit u03 in `region`.
fn with_u03_in(base: &str, version: u64, region: &str) -> String {
    let standby = if region == "sh" { "hz" } else { "sh" };
    base.replace("version: 1\n", &format!("version: {version}\n"))
        .replace(
            "slots: [[3334, 4999]]\n    region: sh\n    standby: sz",
            &format!("slots: [[3334, 4999]]\n    region: {region}\n    standby: {standby}"),
        )
}

/// Where u03 lives in `version` of the swapped tables.
fn owner(version: u64) -> &'static str {
    if version.is_multiple_of(2) {
        "hz"
    } else {
        "sh"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_tables_under_load_fails_nothing_and_never_mixes_versions() {
    let topo = Arc::new(Topology::start().await);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    for entry in ["hz", "sh"] {
        let (topo, stop, done, progress) =
            (topo.clone(), stop.clone(), done.clone(), progress.clone());
        clients.push(tokio::spawn(async move {
            let client = client();
            let addr = topo.region(entry).http;
            let mut results = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Users 3334..4999 are all in u03.
                let user = (3334 + i % 1666).to_string();
                let method = if i.is_multiple_of(3) { "POST" } else { "GET" };
                let (status, _, body) = send(
                    &client,
                    request(method, addr, "/order/1", &[("x-user-id", &user)]),
                )
                .await;
                results.push((
                    status.as_u16(),
                    body["table_version"].as_u64(),
                    body["region"].as_str().map(str::to_owned),
                    body["unit"].as_str().map(str::to_owned),
                ));
                done.fetch_add(1, Ordering::Relaxed);
                progress.notify_waiters();
                i += 1;
            }
            results
        }));
    }
    for version in 2..=101u64 {
        let to = owner(version);
        let from = owner(version - 1);
        let text = with_u03_in(&topo.base_table, version, to);
        // Like a control-plane push: the new owner first, then the old owner, then the rest,
        // so no two gateways ever point at each other.
        for region in [to, from, "sz"] {
            topo.gateway(region)
                .store
                .load_text(&text, false, "test-swap")
                .expect("applied");
        }
        // Let some requests run under this version before the next swap.
        let target = done.load(Ordering::Relaxed) + 6;
        while done.load(Ordering::Relaxed) < target {
            let notified = progress.notified();
            if done.load(Ordering::Relaxed) >= target {
                break;
            }
            notified.await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut versions_seen = std::collections::BTreeSet::new();
    for client in clients {
        for (status, version, region, unit) in client.await.expect("client") {
            total += 1;
            assert_eq!(status, 200, "a request failed during swaps");
            let version = version.expect("version header");
            let region = region.expect("region");
            let expected = if version == 1 { "sh" } else { owner(version) };
            assert_eq!(region, expected, "version {version} served in {region}");
            assert_eq!(unit.as_deref(), Some("u03"));
            versions_seen.insert(version);
        }
    }
    assert!(total >= 600, "only {total} requests");
    assert!(
        versions_seen.len() >= 50,
        "requests saw only {} versions",
        versions_seen.len()
    );
    assert_eq!(
        topo.gateway("hz")
            .store
            .current()
            .map(|s| s.table.version()),
        Some(101)
    );
}

async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                response.extend_from_slice(&buf[..n]);
                if response.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => panic!("no response within 5 s"),
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_style_framing_is_refused_before_any_upstream() {
    let topo = Topology::start().await;
    let hz = topo.region("hz");
    let head = "POST /cart/add HTTP/1.1\r\nHost: shop\r\nX-User-Id: 10\r\n";
    let cases = [
        format!("{head}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        format!("{head}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
        format!("{head}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        format!("{head}Content-Length: 5, 6\r\n\r\nhello!"),
        format!("{head}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        format!("{head}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        format!("{head}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n"),
        format!("{head}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
        format!("{head}Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n"),
        // Bare LF line ends, which HTTP/1.1 parsers may accept.
        "POST /cart/add HTTP/1.1\nHost: shop\nX-User-Id: 10\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\n\n".to_owned(),
        format!("{head}Content-Length: 5\r\nTransfer-Encoding: chunked\n\n0\r\n\r\n"),
    ];
    for case in &cases {
        let response = raw_exchange(hz.http, case.as_bytes()).await;
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "not refused:\n{case}\n---\n{response}"
        );
    }
    for node in &topo.regions {
        for (service, echo) in &node.upstreams {
            assert_eq!(echo.count(), 0, "{}/{service} was reached", node.name);
        }
    }
    // Behind a good request on the same keep-alive connection, too.
    let mut stream = tokio::net::TcpStream::connect(hz.http)
        .await
        .expect("connect");
    let pipelined = format!(
        "GET /cart HTTP/1.1\r\nHost: shop\r\nX-User-Id: 10\r\n\r\n{head}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    stream.write_all(pipelined.as_bytes()).await.expect("write");
    let mut all = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut all),
    )
    .await
    .expect("closed")
    .expect("read");
    let all = String::from_utf8_lossy(&all);
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.contains("HTTP/1.1 400"), "{all}");
    assert_eq!(
        hz.upstreams["cart"].count(),
        1,
        "only the good request reached the upstream"
    );
    assert!(
        hz.upstreams["cart"]
            .received()
            .iter()
            .all(|s| s.method == "GET")
    );

    // A well-framed request on a fresh connection still goes through.
    let ok = raw_exchange(
        hz.http,
        format!("{head}Content-Length: 5\r\nConnection: close\r\n\r\nhello").as_bytes(),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(hz.upstreams["cart"].count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_and_http1_by_alpn() {
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

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .expect("root");
    for (alpn, expected) in [
        (b"h2".to_vec(), http::Version::HTTP_2),
        (b"http/1.1".to_vec(), http::Version::HTTP_11),
    ] {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        client_config.alpn_protocols = vec![alpn];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let tls = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("handshake");
        let io = hyper_util::rt::TokioIo::new(tls);
        let request = http::Request::get(format!("https://localhost:{}/anything", addr.port()))
            .header("x-user-id", "42")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let response = if expected == http::Version::HTTP_2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .expect("h2");
            tokio::spawn(conn);
            sender.send_request(request).await.expect("response")
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1");
            tokio::spawn(conn);
            let mut request = request;
            *request.uri_mut() = "/anything".parse().expect("uri");
            request
                .headers_mut()
                .insert("host", http::HeaderValue::from_static("localhost"));
            sender.send_request(request).await.expect("response")
        };
        assert_eq!(response.version(), expected);
        assert_eq!(response.status(), 200);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["unit"], "u1");
        assert_eq!(body["slot"], 42);
        assert_eq!(body["headers"]["x-forwarded-proto"], "https");
    }
    assert_eq!(echo.count(), 2);
}
