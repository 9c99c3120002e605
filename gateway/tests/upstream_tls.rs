//! TLS to upstreams: a pool written `{ endpoints, tls: { ca_file, server_name, client_cert,
//! client_key } }` is reached over TLS, with certificates from a test CA made by rcgen, and
//! HTTPS upstreams on 127.0.0.1 that record every handshake and request.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use gateway::Gateway;
use http::StatusCode;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::{SECRET, client, loopback_listeners, request, send};
use testkit::tls::{Leaf, TestCa};

// ---- certificates -------------------------------------------------------------------------

/// `leaf`'s certificate chain and key, for a rustls server or client.
fn identity(leaf: &Leaf) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (
        vec![CertificateDer::from(leaf.cert_der.clone())],
        PrivateKeyDer::try_from(leaf.key_der.clone()).expect("key der"),
    )
}

// ---- an HTTPS upstream that records what it sees ------------------------------------------

/// One TLS connection as the upstream saw it.
#[derive(Debug, Clone)]
enum Handshake {
    Done {
        resumed: bool,
        sni: Option<String>,
        alpn: Option<Vec<u8>>,
        client_cert: bool,
    },
    Failed(String),
}

struct TlsUpstream {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    /// Paths of the requests served, in order.
    requests: Arc<Mutex<Vec<String>>>,
}

/// What a [`TlsUpstream`] speaks.
#[derive(Clone, Copy, PartialEq)]
enum Serve {
    /// HTTP/1.1 (ALPN `http/1.1`), connections kept alive.
    KeepAlive,
    /// HTTP/1.1, every response closing its connection: every request needs a new one (and a
    /// handshake).
    CloseEach,
    /// HTTP/2 (ALPN `h2`).
    H2,
}

impl TlsUpstream {
    /// Serve `serve` over TLS with `leaf`; with `client_ca`, demand a client certificate
    /// issued by it.
    async fn start(leaf: &Leaf, client_ca: Option<&TestCa>, serve: Serve) -> TlsUpstream {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(CertificateDer::from(ca.der())).expect("root");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let (chain, key) = identity(leaf);
        let mut config = builder.with_single_cert(chain, key).expect("server config");
        config.alpn_protocols = match serve {
            Serve::H2 => vec![b"h2".to_vec()],
            _ => vec![b"http/1.1".to_vec()],
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (seen, served) = (handshakes.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen, served) = (acceptor.clone(), seen.clone(), served.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(error) => {
                            seen.lock()
                                .expect("lock")
                                .push(Handshake::Failed(error.to_string()));
                            return;
                        }
                    };
                    let connection = tls.get_ref().1;
                    seen.lock().expect("lock").push(Handshake::Done {
                        resumed: connection.handshake_kind()
                            == Some(rustls::HandshakeKind::Resumed),
                        sni: connection.server_name().map(str::to_owned),
                        alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
                        client_cert: connection.peer_certificates().is_some(),
                    });
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let served = served.clone();
                        async move {
                            served
                                .lock()
                                .expect("lock")
                                .push(req.uri().path().to_owned());
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"{\"served_by\":\"tls upstream\"}"),
                            )))
                        }
                    });
                    let _ = match serve {
                        Serve::H2 => {
                            hyper::server::conn::http2::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(TokioIo::new(tls), service)
                            .await
                        }
                        _ => {
                            hyper::server::conn::http1::Builder::new()
                                .keep_alive(serve == Serve::KeepAlive)
                                .serve_connection(TokioIo::new(tls), service)
                                .await
                        }
                    };
                });
            }
        });
        TlsUpstream {
            addr,
            handshakes,
            requests,
        }
    }

    fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().expect("lock").clone()
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

// ---- the gateway's log ----------------------------------------------------------------------

/// Everything the gateways of this test binary logged at WARN and above.
fn log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    let log = LOG.get_or_init(|| Mutex::new(Vec::new()));
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .try_init();
    });
    log
}

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        log().lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines that contain `needle`.
fn log_lines(needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&log().lock().expect("lock"))
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

// ---- a gateway in front of one TLS pool -----------------------------------------------------

/// A one-region table whose `app` pool is `endpoints` reached with `tls` (a YAML mapping).
fn table(version: u64, endpoints: &[SocketAddr], tls: &str) -> String {
    let endpoints = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "version: {version}\nregions:\n  - name: local\n    pools:\n      app:\n        endpoints: [{endpoints}]\n        tls: {tls}\nunits: [{{ name: u1, center: true, slots: [[0, 9999]], region: local }}]\nroutes: [{{ name: app, match: {{ path_prefix: / }}, service: app, class: C, key: [{{ header: X-User-Id }}], missing_key: local }}]\n"
    )
}

async fn gateway(dir: &Path, table: &str, health: &str) -> Gateway {
    log();
    let table_path = dir.join("table.yaml");
    std::fs::write(&table_path, table).expect("table");
    let text = format!(
        "region: local\nlisten: {{ http: [\"127.0.0.1:0\"] }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\ntable: {{ file: {}, poll_interval_ms: 3600000 }}\nhop_secret: {SECRET}\nhealth_check: {health}\naccess_log: false\n",
        table_path.display()
    );
    let config = gateway::config::GatewayConfig::parse(&text, "test").expect("config");
    Gateway::start(config, loopback_listeners())
        .await
        .expect("gateway")
}

const NO_HEALTH_CHECKS: &str = "{ interval_ms: 0 }";

/// A pool's `tls` that trusts the certificates `ca` issued.
fn trusting(ca: &TestCa) -> String {
    format!("{{ ca_file: {} }}", ca.pem_path.display())
}

/// A gateway without health checks whose `app` pool (table version 1) is `upstream`, reached
/// with `tls`.
async fn gateway_to(dir: &Path, upstream: &TlsUpstream, tls: &str) -> Gateway {
    gateway(dir, &table(1, &[upstream.addr], tls), NO_HEALTH_CHECKS).await
}

/// A GET through the gateway, keyed by user 42, over HTTP/1.1: the gateway's own codec.
async fn get(gateway: &Gateway, path: &str) -> (StatusCode, serde_json::Value) {
    let (status, _, body) = send(
        &client(),
        request("GET", gateway.http_addrs[0], path, &[("x-user-id", "42")]),
    )
    .await;
    (status, body)
}

/// The same over HTTP/2 with prior knowledge: hyper's front end, whose requests reach
/// HTTP/1.1 upstreams through `gateway::upstream`. Both connect through `gateway::connect`.
async fn get_h2c(gateway: &Gateway, path: &str) -> (StatusCode, serde_json::Value) {
    let h2c: support::TestClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let (status, _, body) = send(
        &h2c,
        request("GET", gateway.http_addrs[0], path, &[("x-user-id", "42")]),
    )
    .await;
    (status, body)
}

/// A GET over HTTP/1.1 (`/cart/1`) and one over HTTP/2 (`/cart/h2`) are both served by
/// `upstream`, in that order.
async fn served_over_both_front_ends(gateway: &Gateway, upstream: &TlsUpstream) {
    let (status, body) = get(gateway, "/cart/1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["served_by"], "tls upstream");
    let (status, body) = get_h2c(gateway, "/cart/h2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(upstream.requests(), ["/cart/1", "/cart/h2"]);
}

// ---- tests ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_an_https_upstream_whose_certificate_the_pool_trusts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "services");
    let leaf = ca.leaf(dir.path(), "app", &["127.0.0.1", "app.local.test"]);
    let upstream = TlsUpstream::start(&leaf, None, Serve::KeepAlive).await;
    let gateway = gateway_to(dir.path(), &upstream, &trusting(&ca)).await;

    served_over_both_front_ends(&gateway, &upstream).await;
    // Without server_name the endpoint's host is the name checked (its IP SAN); an IP address
    // is never sent as SNI. ALPN says http/1.1.
    let handshakes = upstream.handshakes();
    assert!(!handshakes.is_empty());
    for handshake in handshakes {
        match handshake {
            Handshake::Done { sni, alpn, .. } => {
                assert_eq!(sni, None);
                assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
            }
            other => panic!("{other:?}"),
        }
    }

    // With a server_name, that name is checked and sent as SNI.
    let tls = format!(
        "{{ ca_file: {}, server_name: app.local.test }}",
        ca.pem_path.display()
    );
    gateway
        .store
        .load_text(&table(2, &[upstream.addr], &tls), false, "test")
        .expect("applied");
    let (status, body) = get(&gateway, "/cart/2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        upstream.handshakes().iter().any(|h| matches!(
            h,
            Handshake::Done { sni: Some(sni), .. } if sni == "app.local.test"
        )),
        "{:?}",
        upstream.handshakes()
    );
    gateway.shutdown(Duration::from_secs(1)).await;
}

/// A gateway without health checks whose `app` pool says `protocol: h2` and `tls`, its one
/// endpoint an upstream that serves `serve` with a certificate the pool trusts.
async fn h2_pool_gateway(dir: &Path, serve: Serve) -> (TlsUpstream, Gateway) {
    let ca = TestCa::new(dir, "services");
    let upstream = TlsUpstream::start(&ca.leaf(dir, "app", &["127.0.0.1"]), None, serve).await;
    let table = table(1, &[upstream.addr], &trusting(&ca))
        .replace("        tls: ", "        protocol: h2\n        tls: ");
    let gateway = gateway(dir, &table, NO_HEALTH_CHECKS).await;
    (upstream, gateway)
}

/// An `h2` pool with `tls` is HTTP/2 over TLS, agreed by ALPN, for HTTP/1.1 clients (the
/// codec's detour) and HTTP/2 clients alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_pool_with_tls_speaks_http2_agreed_by_alpn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (upstream, gateway) = h2_pool_gateway(dir.path(), Serve::H2).await;

    served_over_both_front_ends(&gateway, &upstream).await;
    // One connection per gateway worker, whichever took each request.
    let handshakes = upstream.handshakes();
    assert!(!handshakes.is_empty());
    for handshake in &handshakes {
        assert!(
            matches!(handshake, Handshake::Done { alpn: Some(alpn), .. } if alpn == b"h2"),
            "{handshakes:?}"
        );
    }
    gateway.shutdown(Duration::from_secs(1)).await;
}

/// An endpoint of an `h2` pool that does not agree to `h2` by ALPN is unreachable: a 502, and
/// a log line that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_pool_endpoint_that_refuses_h2_by_alpn_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (upstream, gateway) = h2_pool_gateway(dir.path(), Serve::KeepAlive).await;

    let (status, body) = get(&gateway, "/cart/1").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], "upstream unreachable", "{body}");
    assert!(upstream.requests().is_empty());
    let lines = log_lines(&format!("upstream {}", upstream.addr));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("did not agree to HTTP/2 by ALPN")),
        "{lines:?}"
    );
    gateway.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_upstream_certificate_is_a_502_and_a_log_line_naming_endpoint_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trusted = TestCa::new(dir.path(), "trusted");
    let other = TestCa::new(dir.path(), "other");
    let leaf = other.leaf(dir.path(), "app", &["127.0.0.1"]);
    let upstream = TlsUpstream::start(&leaf, None, Serve::KeepAlive).await;
    let gateway = gateway_to(dir.path(), &upstream, &trusting(&trusted)).await;

    for (status, body) in [
        get(&gateway, "/cart/1").await,
        get_h2c(&gateway, "/cart/2").await,
    ] {
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(body["upstream"], upstream.addr.to_string());
    }
    assert!(upstream.requests().is_empty(), "nothing may reach it");
    assert!(
        upstream
            .handshakes()
            .iter()
            .all(|h| matches!(h, Handshake::Failed(_)))
    );
    let expected = format!(
        "upstream {}: certificate not trusted: UnknownIssuer",
        upstream.addr
    );
    let lines = log_lines(&expected);
    assert_eq!(lines.len(), 1, "{:?}", log_lines("certificate"));
    assert!(lines[0].contains("WARN"), "{}", lines[0]);
    // The failure is counted against the endpoint like any failed connection.
    let metrics = support::get_text(&client(), gateway.admin_addr, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("unitgate_upstream_errors_total")
                && l.contains(&upstream.addr.to_string())
                && l.contains("connect")),
        "{metrics}"
    );
    gateway.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_a_502() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "services");
    let leaf = ca.leaf(dir.path(), "app", &["127.0.0.1", "app.local.test"]);
    let upstream = TlsUpstream::start(&leaf, None, Serve::KeepAlive).await;
    let tls = format!(
        "{{ ca_file: {}, server_name: billing.local.test }}",
        ca.pem_path.display()
    );
    let gateway = gateway_to(dir.path(), &upstream, &tls).await;

    let (status, body) = get(&gateway, "/cart/1").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(upstream.requests().is_empty());
    let lines = log_lines(&format!(
        "upstream {}: certificate refused: certificate not valid for name \"billing.local.test\"",
        upstream.addr
    ));
    assert_eq!(lines.len(), 1, "{:?}", log_lines("certificate"));
    gateway.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificate_is_presented_when_the_pool_has_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "services");
    let gateways = TestCa::new(dir.path(), "gateways");
    let leaf = ca.leaf(dir.path(), "app", &["127.0.0.1"]);
    let client_leaf = gateways.leaf(dir.path(), "gateway-local", &["gateway.local.test"]);
    let upstream = TlsUpstream::start(&leaf, Some(&gateways), Serve::KeepAlive).await;

    // Without a client certificate the upstream refuses the gateway: 502, nothing served.
    let gateway = gateway_to(dir.path(), &upstream, &trusting(&ca)).await;
    let (status, body) = get(&gateway, "/cart/1").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(upstream.requests().is_empty());
    assert!(
        matches!(&upstream.handshakes()[..], [Handshake::Failed(why)] if why.contains("certificate")),
        "{:?}",
        upstream.handshakes()
    );

    // With it, the request goes through and the upstream saw the certificate.
    let tls = format!(
        "{{ ca_file: {}, client_cert: {}, client_key: {} }}",
        ca.pem_path.display(),
        client_leaf.cert_path.display(),
        client_leaf.key_path.display()
    );
    gateway
        .store
        .load_text(&table(2, &[upstream.addr], &tls), false, "test")
        .expect("applied");
    let (status, body) = get(&gateway, "/cart/2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(upstream.requests(), ["/cart/2"]);
    assert!(
        matches!(
            upstream.handshakes().last(),
            Some(Handshake::Done {
                client_cert: true,
                ..
            })
        ),
        "{:?}",
        upstream.handshakes()
    );
    gateway.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_resumes_the_session_also_after_a_table_swap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "services");
    let leaf = ca.leaf(dir.path(), "app", &["127.0.0.1"]);
    // Every response closes its connection: each request makes a new one.
    let upstream = TlsUpstream::start(&leaf, None, Serve::CloseEach).await;
    let tls = trusting(&ca);
    let gateway = gateway_to(dir.path(), &upstream, &tls).await;

    for path in ["/a", "/b"] {
        let (status, body) = get(&gateway, path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // A new table with the same TLS settings and files keeps the sessions.
    gateway
        .store
        .load_text(&table(2, &[upstream.addr], &tls), false, "test")
        .expect("applied");
    let (status, body) = get(&gateway, "/c").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    assert_eq!(upstream.requests(), ["/a", "/b", "/c"]);
    let resumed: Vec<bool> = upstream
        .handshakes()
        .iter()
        .map(|h| match h {
            Handshake::Done { resumed, .. } => *resumed,
            Handshake::Failed(why) => panic!("{why}"),
        })
        .collect();
    assert_eq!(resumed, [false, true, true]);
    gateway.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_naming_a_file_the_gateway_cannot_read_is_refused_and_the_old_one_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "services");
    let leaf = ca.leaf(dir.path(), "app", &["127.0.0.1"]);
    let upstream = TlsUpstream::start(&leaf, None, Serve::KeepAlive).await;
    let gateway = gateway_to(dir.path(), &upstream, &trusting(&ca)).await;

    let missing = dir.path().join("missing-ca.pem");
    let refused = gateway
        .store
        .load_text(
            &table(
                2,
                &[upstream.addr],
                &format!("{{ ca_file: {} }}", missing.display()),
            ),
            false,
            "push",
        )
        .expect_err("refused");
    assert_eq!(refused.version, Some(2));
    assert!(
        refused.error.starts_with(&format!(
            "push:7:25: regions[0].pools.app.tls.ca_file: {}: cannot read: ",
            missing.display()
        )),
        "{}",
        refused.error
    );
    // A file that is there but holds no key is refused the same way, naming its field.
    let not_a_key = format!(
        "{{ ca_file: {}, client_cert: {}, client_key: {} }}",
        ca.pem_path.display(),
        leaf.cert_path.display(),
        ca.pem_path.display()
    );
    let refused = gateway
        .store
        .load_text(&table(3, &[upstream.addr], &not_a_key), false, "push")
        .expect_err("refused");
    // Placed at the field's line in the table's text (its column depends on the paths).
    let (place, rest) = refused.error.split_once(": ").expect("a place");
    assert!(place.starts_with("push:7:"), "{}", refused.error);
    assert!(
        rest.starts_with(&format!(
            "regions[0].pools.app.tls.client_key: {}: cannot read private key",
            ca.pem_path.display()
        )),
        "{}",
        refused.error
    );

    let snapshot = gateway.store.current().expect("table");
    assert_eq!(snapshot.table.version(), 1);
    assert_eq!(
        gateway.store.last_rejected().map(|r| r.version),
        Some(Some(3))
    );
    let (status, body) = get(&gateway, "/cart/1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    gateway.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_go_over_tls_and_find_an_untrusted_endpoint_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "services");
    let other = TestCa::new(dir.path(), "other");
    let good = TlsUpstream::start(
        &ca.leaf(dir.path(), "good", &["127.0.0.1"]),
        None,
        Serve::KeepAlive,
    )
    .await;
    let bad = TlsUpstream::start(
        &other.leaf(dir.path(), "bad", &["127.0.0.1"]),
        None,
        Serve::KeepAlive,
    )
    .await;
    let tls = trusting(&ca);
    let gateway = gateway(
        dir.path(),
        &table(1, &[good.addr, bad.addr], &tls),
        "{ interval_ms: 50, timeout_ms: 1000 }",
    )
    .await;

    let health = |addr: SocketAddr| {
        let snapshot = gateway.store.current().expect("table");
        let pool = snapshot.here().pools[0].as_ref().expect("pool");
        let endpoint = pool
            .endpoints
            .iter()
            .find(|e| *e.address == *addr.to_string())
            .expect("endpoint");
        endpoint.health.is_healthy()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while health(bad.addr) {
        assert!(tokio::time::Instant::now() < deadline, "never found down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let two more rounds of checks finish (rounds are one at a time): the trusted endpoint
    // passed them, over TLS; the other never completed a handshake.
    while bad.handshakes().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "checks stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(health(good.addr));
    assert!(!health(bad.addr));
    assert!(
        bad.handshakes()
            .iter()
            .all(|h| matches!(h, Handshake::Failed(_)))
    );
    // Requests go to the healthy one only.
    for _ in 0..4 {
        let (status, body) = get(&gateway, "/cart/1").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(good.requests().len(), 4);
    assert!(bad.requests().is_empty());
    gateway.shutdown(Duration::from_secs(1)).await;
}

/// Two regions' gateways: `hz` (plain HTTP, where requests enter) forwards to `sh` over TLS;
/// `sh`'s HTTPS listener demands a client certificate from the fleet CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_to_another_region_goes_over_mutual_tls_and_keeps_its_marker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = TestCa::new(dir.path(), "fleet");
    let sh_cert = fleet.leaf(dir.path(), "gw-sh", &["127.0.0.1", "gw.sh.test"]);
    let hz_client = fleet.leaf(dir.path(), "gw-hz", &["gw.hz.test"]);
    let stranger = TestCa::new(dir.path(), "stranger").leaf(dir.path(), "stranger", &["x.test"]);
    let hz_cart = support::Echo::start("cart", "hz").await;
    let sh_cart = support::Echo::start("cart", "sh").await;

    let hz_http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let sh_https = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let (hz_addr, sh_addr) = (
        hz_http.local_addr().expect("addr"),
        sh_https.local_addr().expect("addr"),
    );
    // `client` is the certificate hz presents to sh (none: the `tls` without one).
    let table = |version: u64, client: Option<&Leaf>| {
        let client = client.map_or(String::new(), |c| {
            format!(
                ", client_cert: {}, client_key: {}",
                c.cert_path.display(),
                c.key_path.display()
            )
        });
        format!(
            "version: {version}\nregions:\n  - name: hz\n    gateways: [\"{hz_addr}\"]\n    pools: {{ cart: [\"{}\"] }}\n  - name: sh\n    gateways:\n      endpoints: [\"{sh_addr}\"]\n      tls: {{ ca_file: {}, server_name: gw.sh.test{client} }}\n    pools: {{ cart: [\"{}\"] }}\nunits:\n  - {{ name: u1, center: true, slots: [[0, 4999]], region: hz }}\n  - {{ name: u2, slots: [[5000, 9999]], region: sh }}\nroutes: [{{ name: cart, match: {{ path_prefix: /cart }}, service: cart, class: C, key: [{{ header: X-User-Id }}] }}]\n",
            hz_cart.addr,
            fleet.pem_path.display(),
            sh_cart.addr,
        )
    };
    let start = |region: &str, listen: &str, listeners: gateway::Listeners, table: String| {
        let table_path = dir.path().join(format!("{region}.yaml"));
        std::fs::write(&table_path, table).expect("table");
        let text = format!(
            "region: {region}\nlisten: {listen}\nadmin: {{ listen: \"127.0.0.1:0\" }}\ntable: {{ file: {}, poll_interval_ms: 3600000 }}\nhop_secret: {SECRET}\nhealth_check: {{ interval_ms: 0 }}\naccess_log: false\n",
            table_path.display()
        );
        let config = gateway::config::GatewayConfig::parse(&text, "test").expect("config");
        Gateway::start(config, listeners)
    };
    log();
    let sh_listeners = support::https_listeners(
        sh_https,
        &sh_cert.cert_path,
        &sh_cert.key_path,
        Some(&fleet.pem_path),
    );
    let sh = start(
        "sh",
        &format!(
            "{{ https: [{{ address: \"{sh_addr}\", cert: {}, key: {}, client_ca: {} }}] }}",
            sh_cert.cert_path.display(),
            sh_cert.key_path.display(),
            fleet.pem_path.display()
        ),
        sh_listeners,
        table(1, Some(&hz_client)),
    )
    .await
    .expect("sh");
    let hz_listeners = gateway::Listeners {
        http: vec![hz_http],
        https: vec![],
        admin: std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
    };
    let hz = start(
        "hz",
        &format!("{{ http: [\"{hz_addr}\"] }}"),
        hz_listeners,
        table(1, Some(&hz_client)),
    )
    .await
    .expect("hz");

    // User 7000's slot belongs to u2, in sh: hz forwards it there, over mutual TLS.
    let user = [("x-user-id", "7000")];
    for path in ["/cart/1", "/cart/2"] {
        let (status, _, body) = send(&client(), request("GET", hz_addr, path, &user)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["region"], "sh", "{body}");
    }
    let served = sh_cart.received();
    assert_eq!(served.len(), 2);
    assert_eq!(served[0].headers["x-unitgate-unit"], "u2");
    assert!(hz_cart.received().is_empty());

    // hz's hop markers verified at sh (the HMAC checked as ever, TLS or not).
    let rejected = || {
        sh.metrics
            .hop_rejected
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(rejected(), 0);
    // A client of sh's listener with a fleet certificate but a forged marker: the marker is
    // not trusted (ignored and counted); the request is served as one entering sh.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(fleet.der())).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (chain, key) = identity(&hz_client);
    let direct = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain, key)
        .expect("client config");
    let forged = "v1 origin=hz version=1 hops=1 ts=1 sig=00";
    let answer = raw_exchange(
        direct,
        sh_addr,
        &format!("GET /cart/3 HTTP/1.1\r\nhost: gw.sh.test\r\nx-user-id: 7000\r\nx-unitgate-hop: {forged}\r\nconnection: close\r\n\r\n"),
    )
    .await
    .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(rejected(), 1, "the forged marker was not trusted");

    // Without a client certificate sh's listener refuses the connection.
    let anonymous = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    let refused = raw_exchange(
        anonymous,
        sh_addr,
        "GET /cart/4 HTTP/1.1\r\nhost: gw.sh.test\r\nx-user-id: 7000\r\n\r\n",
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    // Nor does a certificate from another CA get in.
    let (chain, key) = identity(&stranger);
    let strangers = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client config");
    let refused = raw_exchange(
        strangers,
        sh_addr,
        "GET /cart/5 HTTP/1.1\r\nhost: gw.sh.test\r\nx-user-id: 7000\r\n\r\n",
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");

    // A table whose hop has no client certificate: sh refuses hz, and the client gets a 502.
    hz.store
        .load_text(&table(2, None), false, "test")
        .expect("applied");
    let (status, _, body) = send(&client(), request("GET", hz_addr, "/cart/6", &user)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        sh_cart.received().len(),
        3,
        "only the direct request reached it"
    );

    hz.shutdown(Duration::from_secs(1)).await;
    sh.shutdown(Duration::from_secs(1)).await;
}

/// Send `request` over TLS to `addr` with `config` and read until the server closes: the
/// answer, or the error that ended the exchange.
async fn raw_exchange(
    config: rustls::ClientConfig,
    addr: SocketAddr,
    request: &str,
) -> Result<String, std::io::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("gw.sh.test").expect("name");
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::Error::other("no answer in 5 s"))?;
    read?;
    if answer.is_empty() {
        return Err(std::io::Error::other("closed without an answer"));
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[test]
fn unitgate_check_reads_the_tls_files_the_table_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "services");
    let missing = dir.path().join("missing-ca.pem");
    let check = |tls: &str| {
        let table_path = dir.path().join("table.yaml");
        std::fs::write(
            &table_path,
            table(1, &["127.0.0.1:9443".parse().expect("addr")], tls),
        )
        .expect("table");
        let config = dir.path().join("gateway.yaml");
        std::fs::write(
            &config,
            format!(
                "region: local\nlisten: {{ http: [\"127.0.0.1:0\"] }}\ntable: {{ file: {} }}\nhop_secret: {SECRET}\n",
                table_path.display()
            ),
        )
        .expect("config");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_unitgate"))
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .expect("unitgate check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check(&trusting(&ca));
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = check(&format!("{{ ca_file: {} }}", missing.display()));
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        format!(
            "{}:7:25: regions[0].pools.app.tls.ca_file: {}: cannot read: No such file or directory (os error 2)\n",
            dir.path().join("table.yaml").display(),
            missing.display()
        )
    );
}
