//! Talking to upstreams and to other regions' gateways: one pooled keep-alive client, and the
//! active health checks of this region's endpoints.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::{HealthCheck, Timeouts};
use crate::store::TableStore;

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type on both sides of the proxy.
pub type Body = BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// The pooled client.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
}

impl Upstream {
    /// A client with keep-alive pooling and the configured connect timeout.
    pub fn new(timeouts: &Timeouts) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect()));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .retry_canceled_requests(true)
            .build(connector);
        Self { client }
    }

    /// Send `request` (its URI names the endpoint).
    pub async fn send(
        &self,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(request).await
    }
}

/// Check this region's endpoints every `interval_ms` until the store is dropped.
pub fn spawn_health_checks(store: Arc<TableStore>, upstream: Upstream, config: HealthCheck) {
    if config.interval_ms == 0 {
        return;
    }
    let store = Arc::downgrade(&store);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(config.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = store.upgrade() else { return };
            let Some(snapshot) = store.current() else {
                continue;
            };
            drop(store);
            let mut checks = Vec::new();
            for pool in snapshot.pools[snapshot.region].iter().flatten() {
                for endpoint in &pool.endpoints {
                    let health = endpoint.health.clone();
                    let authority = endpoint.authority.clone();
                    let upstream = upstream.clone();
                    let config = config.clone();
                    checks.push(tokio::spawn(async move {
                        let ok = check_once(&upstream, &authority, &config).await;
                        if health.is_healthy() != ok {
                            tracing::warn!(endpoint = %authority, healthy = ok, "upstream health changed");
                        }
                        health.set_down(!ok);
                    }));
                }
            }
            for check in checks {
                let _ = check.await;
            }
        }
    });
}

async fn check_once(
    upstream: &Upstream,
    authority: &http::uri::Authority,
    config: &HealthCheck,
) -> bool {
    let timeout = Duration::from_millis(config.timeout_ms);
    match &config.path {
        None => matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority.as_str())).await,
            Ok(Ok(_))
        ),
        Some(path) => {
            let Ok(request) = Request::get(format!("http://{authority}{path}"))
                .header("user-agent", "unitgate-health-check")
                .body(empty())
            else {
                return false;
            };
            matches!(
                tokio::time::timeout(timeout, upstream.send(request)).await,
                Ok(Ok(response)) if response.status().is_success()
            )
        }
    }
}
