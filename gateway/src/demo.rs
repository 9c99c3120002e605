//! The demo's upstream: answers JSON built from what the gateway sent it (service, region,
//! unit, slot, table version, user, method) and keeps a log of every request. The local demo
//! (`unitgate-demo`) runs one per region and service; tests read its log.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

/// One request a demo upstream received.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Every header, lowercase names.
    pub headers: BTreeMap<String, String>,
}

/// Called with every request a demo upstream receives (e.g. to print it).
pub type OnRequest = Arc<dyn Fn(&Received) + Send + Sync>;

/// An upstream that answers JSON built from what it received, and keeps a log of it.
pub struct DemoUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every request received, in order.
    pub log: Arc<Mutex<Vec<Received>>>,
}

impl DemoUpstream {
    /// Start on a free port. With `echo_headers`, answers also list every header received.
    pub async fn start(service: &str, region: &str, echo_headers: bool) -> std::io::Result<Self> {
        Self::start_on(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            service,
            region,
            echo_headers,
            None,
        )
        .await
    }

    /// Start on `addr`; `on_request` also sees every request.
    pub async fn start_on(
        addr: SocketAddr,
        service: &str,
        region: &str,
        echo_headers: bool,
        on_request: Option<OnRequest>,
    ) -> std::io::Result<Self> {
        Self::start_with(addr, service, region, echo_headers, on_request, None).await
    }

    /// [`DemoUpstream::start_on`], serving HTTP/1.1 over TLS with `tls` when given (see
    /// [`tls_config`]): an upstream for a pool with `tls` in the table.
    pub async fn start_with(
        addr: SocketAddr,
        service: &str,
        region: &str,
        echo_headers: bool,
        on_request: Option<OnRequest>,
        tls: Option<DemoTls>,
    ) -> std::io::Result<Self> {
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (service, region, shared_log) = (
            Arc::<str>::from(service),
            Arc::<str>::from(region),
            log.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let tls = tls.clone();
                let (service, region, log, on_request) = (
                    service.clone(),
                    region.clone(),
                    shared_log.clone(),
                    on_request.clone(),
                );
                let handler = service_fn(move |request: Request<Incoming>| {
                    let (service, region, log, on_request) = (
                        service.clone(),
                        region.clone(),
                        log.clone(),
                        on_request.clone(),
                    );
                    async move {
                        let (received, response) =
                            answer(&service, &region, echo_headers, request).await;
                        if let Some(on_request) = &on_request {
                            on_request(&received);
                        }
                        log.lock().unwrap_or_else(|e| e.into_inner()).push(received);
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let http1 = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => {
                            http1
                                .serve_connection(TokioIo::new(stream), handler)
                                .with_upgrades()
                                .await
                        }
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http1
                                    .serve_connection(TokioIo::new(stream), handler)
                                    .with_upgrades()
                                    .await
                            }
                            Err(_) => Ok(()),
                        },
                    };
                });
            }
        });
        Ok(Self { addr, log })
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How a demo upstream serves TLS.
pub type DemoTls = Arc<rustls::ServerConfig>;

/// A TLS config for a demo upstream: the certificate chain and key of two PEM files, ALPN
/// `http/1.1` (what it speaks).
pub fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<DemoTls, String> {
    let config = control_api::tls::server_config(cert, key)?;
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn answer(
    service: &str,
    region: &str,
    echo_headers: bool,
    request: Request<Incoming>,
) -> (Received, Response<Full<Bytes>>) {
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let header = |name: &str| headers.get(name).cloned();
    let mut body = json!({
        "service": service,
        "region": region,
        "unit": header("x-unitgate-unit"),
        "slot": header("x-unitgate-slot").and_then(|s| s.parse::<u32>().ok()),
        "table_version": header("x-unitgate-table-version").and_then(|s| s.parse::<u64>().ok()),
        "user": header("x-unitgate-key"),
        "method": request.method().as_str(),
    });
    if echo_headers {
        body["headers"] = json!(headers);
    }
    let received = Received {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        headers,
    };
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    (received, response)
}
