//! Talking to upstreams and to other regions' gateways: keep-alive HTTP/1.1 connections pooled
//! per endpoint, and the active health checks of this region's endpoints.
//!
//! The pool is ours rather than hyper-util's legacy client: requests arrive already knowing
//! their endpoint, so a checkout is one short lock and a map lookup by the endpoint's address
//! (FNV, no allocation), and the request goes straight onto the connection without a channel
//! hop to a pool task.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fnv::FnvBuildHasher;
use http::uri::Authority;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::config::{HealthCheck, Timeouts};
use crate::connect::Connectors;
use crate::store::TableStore;

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type on both sides of the proxy.
pub type Body = BoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// An idle connection is closed after this long unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// Why an exchange with an upstream failed.
pub struct UpstreamError {
    /// The request, when the connection could not be made: nothing was sent, so it may be
    /// sent elsewhere as it is.
    unsent: Option<Request<Body>>,
    message: String,
}

impl UpstreamError {
    /// The connection could not be made (nothing was sent: safe to try elsewhere).
    pub fn is_connect(&self) -> bool {
        self.unsent.is_some()
    }

    /// The request back, when nothing of it was sent.
    pub fn into_unsent(self) -> Option<Request<Body>> {
        self.unsent
    }
}

impl std::fmt::Debug for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamError")
            .field("connect", &self.is_connect())
            .field("message", &self.message)
            .finish()
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UpstreamError {}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
    /// [`Connectors::epoch`] when it was pooled: a connection pooled before an address's TLS
    /// settings changed is not reused.
    epoch: u64,
}

struct Pool {
    idle: Mutex<HashMap<Box<str>, Vec<Idle>, FnvBuildHasher>>,
    connect_timeout: Duration,
    /// How to connect to each address (plain TCP or TLS), as the tables applied say.
    connectors: Arc<Connectors>,
}

impl Pool {
    /// The most recently used idle connection to `endpoint` that is still open.
    fn checkout(&self, endpoint: &str) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let connections = idle.get_mut(endpoint)?;
        let epoch = self.connectors.epoch();
        while let Some(candidate) = connections.pop() {
            if !candidate.sender.is_closed()
                && candidate.since.elapsed() < IDLE_TIMEOUT
                && candidate.epoch == epoch
            {
                return Some(candidate.sender);
            }
        }
        None
    }

    fn give_back(&self, endpoint: &str, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match idle.get_mut(endpoint) {
            Some(entry) => entry,
            None => idle.entry(endpoint.into()).or_default(),
        };
        if entry.len() < MAX_IDLE_PER_ENDPOINT {
            entry.push(Idle {
                sender,
                since: Instant::now(),
                epoch: self.connectors.epoch(),
            });
        }
    }

    /// A new connection to `endpoint`; the error says why there is none.
    async fn connect(&self, endpoint: &Authority) -> Result<SendRequest<Body>, String> {
        let stream = (self.connectors.get(endpoint.as_str()))
            .connect(endpoint.as_str(), self.connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("{endpoint}: handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        Ok(sender)
    }
}

/// The upstream client.
#[derive(Clone)]
pub struct Upstream {
    pool: Arc<Pool>,
}

impl Upstream {
    /// A client with keep-alive pooling and the configured connect timeout, in plain text.
    pub fn new(timeouts: &Timeouts) -> Self {
        Self::with_connectors(timeouts, Arc::default())
    }

    /// A client that connects to each address as `connectors` says (the table store's).
    pub fn with_connectors(timeouts: &Timeouts, connectors: Arc<Connectors>) -> Self {
        Self {
            pool: Arc::new(Pool {
                idle: Mutex::new(HashMap::default()),
                connect_timeout: timeouts.connect(),
                connectors,
            }),
        }
    }

    /// Send `request` (origin-form URI) to `endpoint`, on an idle connection when there is
    /// one. A request an idle connection closed under before taking it is sent on another.
    pub async fn send(
        &self,
        endpoint: &Authority,
        mut request: Request<Body>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        if !request.headers().contains_key(header::HOST)
            && let Ok(host) = http::HeaderValue::from_str(endpoint.as_str())
        {
            request.headers_mut().insert(header::HOST, host);
        }
        while let Some(mut sender) = self.pool.checkout(endpoint.as_str()) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.pooled(endpoint, response, sender)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => {
                        return Err(UpstreamError {
                            unsent: None,
                            message: format!("{endpoint}: {}", error.into_error()),
                        });
                    }
                },
            }
        }
        let mut sender = match self.pool.connect(endpoint).await {
            Ok(sender) => sender,
            Err(message) => {
                return Err(UpstreamError {
                    unsent: Some(request),
                    message,
                });
            }
        };
        match sender.send_request(request).await {
            Ok(response) => Ok(self.pooled(endpoint, response, sender)),
            Err(error) => Err(UpstreamError {
                unsent: None,
                message: format!("{endpoint}: {error}"),
            }),
        }
    }

    /// The response, whose body gives the connection back to the pool once read to its end.
    fn pooled(
        &self,
        endpoint: &Authority,
        response: Response<Incoming>,
        sender: SendRequest<Body>,
    ) -> Response<PooledBody> {
        // An upgraded connection belongs to the tunnel now.
        let reusable = response.status() != StatusCode::SWITCHING_PROTOCOLS;
        response.map(|inner| {
            let mut body = PooledBody {
                inner,
                give_back: reusable.then(|| GiveBack {
                    pool: self.pool.clone(),
                    endpoint: endpoint.clone(),
                    sender,
                }),
            };
            if hyper::body::Body::is_end_stream(&body.inner) {
                body.release();
            }
            body
        })
    }
}

struct GiveBack {
    pool: Arc<Pool>,
    endpoint: Authority,
    sender: SendRequest<Body>,
}

/// An upstream response body. Read to its end, it returns its connection to the pool; dropped
/// before that, the connection closes (it may still carry the rest of this response).
pub struct PooledBody {
    inner: Incoming,
    give_back: Option<GiveBack>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(back) = self.give_back.take() {
            back.pool.give_back(back.endpoint.as_str(), back.sender);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // Servers stop polling a body that says it ended, so its last frame is the moment.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => hyper::body::Body::is_end_stream(&self.inner),
            _ => false,
        };
        if ended {
            self.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

/// Check this region's endpoints every `interval_ms` until the store is dropped.
pub fn spawn_health_checks(store: Arc<TableStore>, upstream: Upstream, config: HealthCheck) {
    if config.interval_ms == 0 {
        return;
    }
    let store = Arc::downgrade(&store);
    // Pools with `protocol: h2` are checked over HTTP/2 (`upstream_h2::check`).
    let h2 = crate::upstream_h2::H2Upstream::with_connect_timeout(Duration::from_millis(
        config.timeout_ms,
    ));
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
            for (service, pool) in snapshot.here().pools.iter().enumerate() {
                let Some(pool) = pool else { continue };
                let h2 = crate::upstream_h2::wanted(&snapshot.table, snapshot.region, service)
                    .then(|| h2.clone());
                for endpoint in &pool.endpoints {
                    let health = endpoint.health.clone();
                    let authority = endpoint.authority.clone();
                    let connector = endpoint.connector.clone();
                    let upstream = upstream.clone();
                    let config = config.clone();
                    let h2 = h2.clone();
                    checks.push(tokio::spawn(async move {
                        let ok =
                            check_once(&upstream, h2.as_ref(), &authority, &connector, &config)
                                .await;
                        // Said when the active checks' verdict changes: an endpoint ejected by
                        // failed requests that passes its checks is not news every round.
                        if health.set_down(!ok) {
                            tracing::warn!(endpoint = %authority, healthy = ok, "upstream health changed");
                        }
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
    h2: Option<&crate::upstream_h2::H2Upstream>,
    authority: &http::uri::Authority,
    connector: &Arc<crate::connect::Connector>,
    config: &HealthCheck,
) -> bool {
    let timeout = Duration::from_millis(config.timeout_ms);
    match (&config.path, h2) {
        (None, _) => matches!(
            // A connection as requests make it: over TLS, the handshake and certificate too.
            tokio::time::timeout(
                timeout,
                (upstream.pool.connectors.get(authority.as_str()))
                    .connect(authority.as_str(), timeout)
            )
            .await,
            Ok(Ok(_))
        ),
        (Some(path), Some(h2)) => matches!(
            tokio::time::timeout(
                timeout,
                crate::upstream_h2::check(h2, authority, connector, path)
            )
            .await,
            Ok(true)
        ),
        (Some(path), None) => {
            let Ok(request) = Request::get(path.as_str())
                .header("user-agent", "unitgate-health-check")
                .body(empty())
            else {
                return false;
            };
            matches!(
                tokio::time::timeout(timeout, upstream.send(authority, request)).await,
                Ok(Ok(response)) if response.status().is_success()
            )
        }
    }
}
