//! A real three-region topology on 127.0.0.1: echo upstreams per region and service, and one
//! gateway per region, all on ports the OS picks.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use gateway::config::GatewayConfig;
use gateway::demo::{DemoUpstream, Received};
use gateway::{Gateway, Listeners};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

pub const SECRET: &str = "test-hop-secret-0123456789abcdef0123";
pub const REGIONS: [&str; 3] = ["hz", "sh", "sz"];
pub const SERVICES: [&str; 3] = ["cart", "order", "item"];

/// The demo's upstream, answering also with every header it received; it logs each request.
pub struct Echo {
    pub addr: SocketAddr,
    upstream: DemoUpstream,
}

impl Echo {
    pub async fn start(service: &str, region: &str) -> Echo {
        let upstream = DemoUpstream::start(service, region, true)
            .await
            .expect("upstream starts");
        Echo {
            addr: upstream.addr,
            upstream,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.upstream.received()
    }

    pub fn count(&self) -> usize {
        self.upstream.received().len()
    }
}

/// One region's pieces.
pub struct RegionNode {
    pub name: &'static str,
    pub upstreams: BTreeMap<&'static str, Echo>,
    pub gateway: Option<Gateway>,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub table_path: PathBuf,
    pub cache_dir: PathBuf,
}

/// Three regions with a gateway each.
pub struct Topology {
    pub dir: tempfile::TempDir,
    pub regions: Vec<RegionNode>,
    pub base_table: String,
}

/// The example table with this topology's addresses.
pub fn table_yaml(
    template: &str,
    upstreams: &BTreeMap<(&str, &str), SocketAddr>,
    gateways: &BTreeMap<&str, SocketAddr>,
) -> String {
    let mut yaml = template.to_owned();
    for (i, region) in REGIONS.iter().enumerate() {
        yaml = yaml.replace(
            &format!("127.0.0.1:800{}", i + 1),
            &gateways[region].to_string(),
        );
        for (j, service) in SERVICES.iter().enumerate() {
            yaml = yaml.replace(
                &format!("127.0.0.1:18{}0{}", i + 1, j + 1),
                &upstreams[&(*region, *service)].to_string(),
            );
        }
    }
    yaml
}

pub fn example_table() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/three-regions.yaml"),
    )
    .expect("example")
}

pub fn gateway_config(region: &str, table: &Path, cache: &Path) -> GatewayConfig {
    let text = format!(
        "region: {region}\nlisten: {{ http: [\"127.0.0.1:0\"] }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\ntable: {{ file: {}, poll_interval_ms: 3600000 }}\ncache_dir: {}\nhop_secret: {SECRET}\nhealth_check: {{ interval_ms: 0 }}\naccess_log: false\n",
        table.display(),
        cache.display()
    );
    GatewayConfig::parse(&text, "test").expect("config")
}

impl Topology {
    /// Start upstreams and gateways; `edit` may change the table text (per region) first.
    pub async fn start_with(edit: impl Fn(&str, String) -> String) -> Topology {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut upstream_addrs = BTreeMap::new();
        let mut upstreams: BTreeMap<&str, BTreeMap<&'static str, Echo>> = BTreeMap::new();
        for region in REGIONS {
            for service in SERVICES {
                let echo = Echo::start(service, region).await;
                upstream_addrs.insert((region, service), echo.addr);
                upstreams.entry(region).or_default().insert(service, echo);
            }
        }
        // Bind every gateway first: the table must name them all.
        let mut bound = BTreeMap::new();
        let mut gateway_addrs = BTreeMap::new();
        for region in REGIONS {
            let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let admin = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            gateway_addrs.insert(region, http.local_addr().expect("addr"));
            bound.insert(region, (http, admin));
        }
        let base_table = table_yaml(&example_table(), &upstream_addrs, &gateway_addrs);
        let mut regions = Vec::new();
        for region in REGIONS {
            let (http, admin) = bound.remove(region).expect("bound");
            let (http_addr, admin_addr) = (
                http.local_addr().expect("addr"),
                admin.local_addr().expect("addr"),
            );
            let table_path = dir.path().join(format!("{region}-table.yaml"));
            std::fs::write(&table_path, edit(region, base_table.clone())).expect("write table");
            let cache_dir = dir.path().join(format!("{region}-cache"));
            let config = gateway_config(region, &table_path, &cache_dir);
            let listeners = Listeners {
                http: vec![http],
                https: vec![],
                admin,
            };
            let gateway = Gateway::start(config, listeners)
                .await
                .expect("gateway starts");
            regions.push(RegionNode {
                name: region,
                upstreams: upstreams.remove(region).expect("upstreams"),
                gateway: Some(gateway),
                http: http_addr,
                admin: admin_addr,
                table_path,
                cache_dir,
            });
        }
        Topology {
            dir,
            regions,
            base_table,
        }
    }

    pub async fn start() -> Topology {
        Self::start_with(|_, t| t).await
    }

    pub fn region(&self, name: &str) -> &RegionNode {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .expect("region")
    }

    pub fn gateway(&self, name: &str) -> &Gateway {
        self.region(name).gateway.as_ref().expect("running")
    }
}

/// An address that refuses connections: a socket bound but not listening. The port stays
/// reserved (no other test can take it) while the returned socket lives.
pub fn refusing_address() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

/// A plain HTTP and an admin listener on ports the OS picks.
pub fn loopback_listeners() -> Listeners {
    Listeners {
        http: vec![std::net::TcpListener::bind("127.0.0.1:0").expect("bind")],
        https: vec![],
        admin: std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A request to `addr`.
pub fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::new(Bytes::new())).expect("request")
}

/// Send and read the whole response: status, headers, JSON body (or Null).
pub async fn send(
    client: &TestClient,
    req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Value) {
    let response = client.request(req).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

pub async fn get_json(client: &TestClient, addr: SocketAddr, path: &str) -> Value {
    send(client, request("GET", addr, path, &[])).await.2
}

/// A one-region gateway whose `app` pool is `endpoints` (all paths, keyed by X-User-Id).
pub async fn gateway_with_pool(
    dir: &std::path::Path,
    endpoints: &[SocketAddr],
    extra: &str,
) -> Gateway {
    let pool = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let table = format!(
        "version: 1\nregions: [{{ name: local, pools: {{ app: [{pool}] }} }}]\nunits: [{{ name: u1, center: true, slots: [[0, 9999]], region: local }}]\nroutes: [{{ name: app, match: {{ path_prefix: / }}, service: app, class: C, key: [{{ header: X-User-Id }}], missing_key: local }}]\n"
    );
    let table_path = dir.join("table.yaml");
    std::fs::write(&table_path, table).expect("table");
    let mut text = format!(
        "region: local\nlisten: {{ http: [\"127.0.0.1:0\"] }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\ntable: {{ file: {} }}\nhop_secret: {SECRET}\naccess_log: false\n",
        table_path.display()
    );
    text.push_str(extra);
    let config = gateway::config::GatewayConfig::parse(&text, "test").expect("config");
    let listeners = loopback_listeners();
    Gateway::start(config, listeners).await.expect("gateway")
}

/// [`gateway_with_pool`] in a directory of its own, which must live as long as the gateway.
pub async fn pool_gateway(endpoints: &[SocketAddr], extra: &str) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = gateway_with_pool(dir.path(), endpoints, extra).await;
    (dir, gateway)
}

/// A listener on a port the OS picks whose every connection is served by `serve`, in a task of
/// its own; its address.
pub async fn serve_each<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// A new connection to `addr` on which `bytes` have been written.
pub async fn connect_and_write(addr: SocketAddr, bytes: &[u8]) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream
}

/// Listeners for a gateway that serves HTTPS only on `listener`, with the certificate and key
/// in `cert` and `key`, demanding client certificates from `client_ca` when given.
pub fn https_listeners(
    listener: std::net::TcpListener,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> gateway::Listeners {
    let tls = gateway::config::TlsListen {
        address: listener.local_addr().expect("addr"),
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        client_ca: client_ca.map(Path::to_path_buf),
    };
    gateway::Listeners {
        http: vec![],
        https: vec![(listener, tls.server_config().expect("tls"))],
        admin: std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
    }
}

/// An HTTP/2 connection to `addr` with prior knowledge (h2c), driven in the background.
pub async fn h2c<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c");
    tokio::spawn(connection);
    sender
}

/// The body of a GET of `path` from `addr`, as text.
pub async fn get_text(client: &TestClient, addr: SocketAddr, path: &str) -> String {
    let response = client
        .request(request("GET", addr, path, &[]))
        .await
        .expect("response");
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// What `stream` sends up to the end of a message head (and any bytes that came with it);
/// `None` when it closes or fails first.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    Some(head)
}

/// An HTTP/1.1 upstream that answers any request with a body that never ends, written until
/// the gateway lets the connection go; `let_go` is notified then.
pub async fn endless_answer(let_go: std::sync::Arc<tokio::sync::Notify>) -> SocketAddr {
    serve_each(move |mut stream| {
        let let_go = let_go.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            if read_head(&mut stream).await.is_none() {
                return;
            }
            let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
            let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            loop {
                out.extend_from_slice(chunk.as_bytes());
                if stream.write_all(&out).await.is_err() {
                    let_go.notify_one();
                    return;
                }
                out.clear();
            }
        }
    })
    .await
}

/// Freeze the one unit of a `pool_gateway` (its table in `dir`) for writes: version 2 of its
/// table, loaded into `store`.
pub fn freeze_pool_unit(dir: &Path, store: &gateway::store::TableStore) {
    let v1 = std::fs::read_to_string(dir.join("table.yaml")).expect("table");
    let v2 = v1
        .replace("version: 1\n", "version: 2\n")
        .replace("region: local }", "region: local, state: write_frozen }");
    assert_ne!(v1, v2, "u1 freezes");
    store.load_text(&v2, false, "test").expect("v2");
}

/// Resolves once `store` has vouched for table `version` (every write routed by an older one
/// ended or let go).
pub async fn settled_on(store: &gateway::store::TableStore, version: u64) {
    let signal = store.settle_signal();
    loop {
        let changed = signal.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if store.settled().map(|s| s.table.version()) == Some(version) {
            return;
        }
        changed.await;
    }
}
