//! HTTP/2 to the endpoints of pools whose table entry says `protocol: h2` (gRPC services), and
//! to other regions' gateways when the serving region's pool for the route's service does.
//!
//! HTTP/2 multiplexes, so the pool keeps one shared connection per endpoint (per worker) rather
//! than a stack of idle ones: every request clones its sender and opens a stream on it. A
//! connection that closed (GOAWAY, reset, failed keep-alive ping) is replaced by the next request
//! that finds it so; requests arriving while it is being made wait for that one connection
//! instead of each making their own, and learn of its failure instead of trying again in turn.
//! A connection unused for [`IDLE_TIMEOUT`] is given up by its own task, so endpoints that left
//! the table do not keep connections open.
//!
//! Connections are made by the endpoint's [`Connector`], as its pool (or the region's
//! `gateways`) says: over TLS with ALPN `h2`, which the endpoint must agree to; over plain TCP,
//! h2c (HTTP/2 with prior knowledge).
//!
//! Requests leave as HTTP/2 should: absolute URI (`:scheme`, `:authority` from the `Host` the
//! gateway routed by), no connection-specific fields (RFC 9113 section 8.2.2), `TE: trailers`
//! for gRPC. Trailers pass both ways as body frames: the client's to the upstream, the
//! upstream's to the client.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fnv::FnvBuildHasher;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use router_rules::table::RegionIndex;
use router_rules::{CompiledTable, UpstreamProtocol};

use crate::config::Timeouts;
use crate::connect::Connector;
use crate::h1::bridge::BridgeError;
use crate::store::EndpointState;
use crate::upstream::{Body, BoxError, PooledBody, Upstream, UpstreamError};

/// A connection unused this long is closed (by its own task; streams still open finish first).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Keep-alive pings on a connection with streams open: a peer that stops answering is found
/// within `PING_INTERVAL + PING_TIMEOUT`, and its connection replaced.
const PING_INTERVAL: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether requests for `service` go over HTTP/2 when `region` serves them: that region's pool
/// for the service says `protocol: h2`. The same answer holds for the hop to that region's
/// gateways, plain or TLS, so that gRPC's trailers cross regions on HTTP/2 too.
pub fn wanted(table: &CompiledTable, region: RegionIndex, service: usize) -> bool {
    table
        .regions()
        .get(region)
        .and_then(|region| region.pool(service))
        .is_some_and(|pool| pool.protocol == UpstreamProtocol::H2)
}

/// Why an HTTP/2 exchange failed.
pub struct H2Error {
    /// The request, when no connection could be had: nothing was sent, so it may be sent
    /// elsewhere as it is.
    unsent: Option<Request<Body>>,
    /// The upstream reset the request's stream as malformed (not the connection).
    refused: bool,
    message: String,
}

impl H2Error {
    /// The upstream reset this request's stream as malformed, its connection going on: it
    /// refused the one request (a field it found malformed), which says nothing about the
    /// endpoint.
    pub fn is_refused(&self) -> bool {
        self.refused
    }

    /// No connection could be made (nothing was sent: safe to try elsewhere).
    pub fn is_connect(&self) -> bool {
        self.unsent.is_some()
    }

    /// The request back, when nothing of it was sent.
    pub fn into_unsent(self) -> Option<Request<Body>> {
        self.unsent
    }
}

impl std::fmt::Debug for H2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Error")
            .field("connect", &self.is_connect())
            .field("message", &self.message)
            .finish()
    }
}

impl std::fmt::Display for H2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for H2Error {}

/// The HTTP/2 upstream client: one shared connection per endpoint.
#[derive(Clone)]
pub struct H2Upstream {
    pool: Arc<Pool>,
}

struct Pool {
    /// By how they are reached ([`Connector::key`]), then by address: two pools may reach one
    /// address differently (another server name or CA), each with a connection of its own.
    endpoints: Mutex<HashMap<Box<str>, Slots, FnvBuildHasher>>,
    connect_timeout: Duration,
    /// The clock `Slot::last_used` counts from.
    epoch: Instant,
}

/// The connections to the endpoints reached one way, by address.
type Slots = HashMap<Box<str>, Arc<Slot>, FnvBuildHasher>;

/// One endpoint's connection.
#[derive(Default)]
struct Slot {
    open: Mutex<Option<Open>>,
    /// Held while a connection is being made; the last failure, for those who waited on it.
    connecting: tokio::sync::Mutex<Option<Failure>>,
    /// Milliseconds since the pool's epoch when a request last took the connection.
    last_used: AtomicU64,
}

struct Open {
    sender: SendRequest<Body>,
    /// How it was made: a table that changes the endpoint's TLS settings gets a new one.
    connector: Arc<Connector>,
    /// Tells this connection from the one that may replace it.
    id: u64,
}

struct Failure {
    at: Instant,
    message: String,
}

impl Slot {
    /// The open connection, if it is still usable and was made as `connector` makes them.
    fn sender(&self, connector: &Arc<Connector>) -> Option<SendRequest<Body>> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.as_ref()
            .filter(|o| {
                !o.sender.is_closed()
                    && (Arc::ptr_eq(&o.connector, connector) || o.connector.same_as(connector))
            })
            .map(|o| o.sender.clone())
    }

    /// Forget connection `id` (closed, or idle): the next request makes a new one.
    fn retire(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.as_ref().is_some_and(|o| o.id == id) {
            *open = None;
        }
    }
}

static CONNECTION_IDS: AtomicU64 = AtomicU64::new(1);

impl H2Upstream {
    /// A client with the configured connect timeout.
    pub fn new(timeouts: &Timeouts) -> Self {
        Self::with_connect_timeout(timeouts.connect())
    }

    /// A client whose connections must be made within `connect_timeout` (TCP and the HTTP/2
    /// preface).
    pub fn with_connect_timeout(connect_timeout: Duration) -> Self {
        Self {
            pool: Arc::new(Pool {
                endpoints: Mutex::new(HashMap::default()),
                connect_timeout,
                epoch: Instant::now(),
            }),
        }
    }

    /// Send `request` (origin-form URI, as the proxy makes it) to `endpoint` over HTTP/2, on a
    /// connection `connector` makes.
    pub async fn send(
        &self,
        endpoint: &Authority,
        connector: &Arc<Connector>,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, H2Error> {
        let mut request = into_h2(request, endpoint, connector.is_tls());
        let slot = self.pool.slot(connector, endpoint.as_str());
        // A connection that closed under us before taking the request gives it back: one more
        // try, on a new connection.
        for _ in 0..2 {
            let mut sender = match slot.sender(connector) {
                Some(sender) => sender,
                None => match self.pool.connect(&slot, endpoint, connector).await {
                    Ok(sender) => sender,
                    Err(message) => {
                        return Err(H2Error {
                            unsent: Some(request),
                            refused: false,
                            message,
                        });
                    }
                },
            };
            slot.last_used.store(self.pool.now_ms(), Ordering::Relaxed);
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => {
                        let error = error.into_error();
                        return Err(H2Error {
                            unsent: None,
                            refused: is_refused_as_malformed(&error),
                            message: format!("{endpoint}: {error}"),
                        });
                    }
                },
            }
        }
        Err(H2Error {
            unsent: Some(request),
            refused: false,
            message: format!("{endpoint}: HTTP/2 connections closed before taking the request"),
        })
    }
}

impl Pool {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn slot(&self, connector: &Connector, endpoint: &str) -> Arc<Slot> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let slots = match endpoints.get_mut(connector.key()) {
            Some(slots) => slots,
            None => endpoints.entry(connector.key().into()).or_default(),
        };
        match slots.get(endpoint) {
            Some(slot) => slot.clone(),
            None => slots.entry(endpoint.into()).or_default().clone(),
        }
    }

    /// A new connection to `endpoint`, or the one another request just made.
    async fn connect(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        endpoint: &Authority,
        connector: &Arc<Connector>,
    ) -> Result<SendRequest<Body>, String> {
        let waiting_since = Instant::now();
        let mut connecting = slot.connecting.lock().await;
        if let Some(sender) = slot.sender(connector) {
            return Ok(sender);
        }
        // Someone made the attempt while this request waited, and it failed: that is this
        // request's answer too, rather than another connect timeout of its own.
        if let Some(failure) = connecting.as_ref().filter(|f| f.at >= waiting_since) {
            return Err(failure.message.clone());
        }
        match self.handshake(endpoint, connector).await {
            Ok((sender, id)) => {
                *connecting = None;
                *slot.open.lock().unwrap_or_else(|e| e.into_inner()) = Some(Open {
                    sender: sender.clone(),
                    connector: connector.clone(),
                    id,
                });
                self.watch(slot, id);
                Ok(sender)
            }
            Err(message) => {
                *connecting = Some(Failure {
                    at: Instant::now(),
                    message: message.clone(),
                });
                Err(message)
            }
        }
    }

    async fn handshake(
        &self,
        endpoint: &Authority,
        connector: &Connector,
    ) -> Result<(SendRequest<Body>, u64), String> {
        let made = async {
            let stream = connector
                .connect_h2(endpoint.as_str(), self.connect_timeout)
                .await
                .map_err(|e| e.to_string())?;
            let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(PING_INTERVAL)
                .keep_alive_timeout(PING_TIMEOUT);
            builder
                .handshake::<_, Body>(TokioIo::new(stream))
                .await
                .map_err(|e| format!("{endpoint}: HTTP/2 handshake: {e}"))
        };
        let (sender, connection) = tokio::time::timeout(self.connect_timeout, made)
            .await
            .map_err(|_| format!("{endpoint}: connect timed out"))??;
        let id = CONNECTION_IDS.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended");
            }
        });
        Ok((sender, id))
    }

    /// Give connection `id` up once it has been idle for [`IDLE_TIMEOUT`] (its streams still
    /// open finish on it), or as soon as it closes.
    fn watch(self: &Arc<Self>, slot: &Arc<Slot>, id: u64) {
        let pool = Arc::downgrade(self);
        let slot: Weak<Slot> = Arc::downgrade(slot);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(IDLE_TIMEOUT / 6);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(pool), Some(slot)) = (pool.upgrade(), slot.upgrade()) else {
                    return;
                };
                let open = slot
                    .open
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .filter(|o| o.id == id)
                    .map(|o| o.sender.is_closed());
                let idle_ms = pool
                    .now_ms()
                    .saturating_sub(slot.last_used.load(Ordering::Relaxed));
                match open {
                    None => return,
                    Some(closed) if closed || u128::from(idle_ms) >= IDLE_TIMEOUT.as_millis() => {
                        slot.retire(id);
                        return;
                    }
                    Some(_) => {}
                }
            }
        });
    }
}

/// Whether `error` is the upstream resetting one stream as malformed (RST_STREAM with
/// PROTOCOL_ERROR), its connection going on. Other resets (INTERNAL_ERROR, REFUSED_STREAM, ...)
/// and connection failures say something about the endpoint.
fn is_refused_as_malformed(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.is_reset()
                && h2.is_remote()
                && !h2.is_go_away()
                && h2.reason() == Some(h2::Reason::PROTOCOL_ERROR);
        }
        source = cause.source();
    }
    false
}

/// Connection-specific fields, which HTTP/2 forbids (RFC 9113 section 8.2.2).
static CONNECTION_SPECIFIC: [HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Marks a request whose `:authority` [`into_h2`] filled in with the endpoint's address rather
/// than a name the client gave: handed back unsent and sent to another endpoint, it names that
/// one instead.
#[derive(Clone, Copy)]
struct EndpointAuthority;

/// `request` as an HTTP/2 request to `endpoint`, over TLS when `tls` (`:scheme` says which).
fn into_h2(mut request: Request<Body>, endpoint: &Authority, tls: bool) -> Request<Body> {
    // `:authority` takes `Host`'s place: the name the client asked for and the gateway routed
    // by, or the endpoint's own when there is none. A request handed back unsent and sent
    // again has the client's in its URI already.
    let filled = request
        .extensions_mut()
        .remove::<EndpointAuthority>()
        .is_some();
    let routed = request.uri().authority().filter(|_| !filled).cloned();
    let host = request
        .headers_mut()
        .remove(header::HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok());
    let authority = match routed.or(host) {
        Some(authority) => authority,
        None => {
            request.extensions_mut().insert(EndpointAuthority);
            endpoint.clone()
        }
    };
    let headers = request.headers_mut();
    for name in &CONNECTION_SPECIFIC {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
    // gRPC servers may insist on it; the proxy's hop-by-hop rules took the client's away.
    if crate::grpc::is_grpc(headers) {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *request.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
    *request.version_mut() = Version::HTTP_2;
    request
}

/// The response body of either client, as the forward phase hands it on.
pub enum UpstreamBody {
    /// From an HTTP/1.1 upstream through hyper's client: gives its connection back to the
    /// pool at its end.
    Http1(PooledBody),
    /// From an HTTP/2 upstream; trailers included.
    H2(Incoming),
    /// From an HTTP/1.1 upstream through the gateway's own codec ([`crate::h1::bridge`]).
    Codec(Body),
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let boxed = |e: hyper::Error| Box::new(e) as BoxError;
        match self.get_mut() {
            UpstreamBody::Http1(body) => Pin::new(body).poll_frame(cx).map_err(boxed),
            UpstreamBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(boxed),
            UpstreamBody::Codec(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(body) => body.is_end_stream(),
            UpstreamBody::H2(body) => body.is_end_stream(),
            UpstreamBody::Codec(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http1(body) => body.size_hint(),
            UpstreamBody::H2(body) => body.size_hint(),
            UpstreamBody::Codec(body) => body.size_hint(),
        }
    }
}

/// Why either client's exchange failed.
#[derive(Debug)]
pub enum SendError {
    /// hyper's HTTP/1.1 client's.
    Http1(UpstreamError),
    /// The HTTP/2 client's.
    H2(H2Error),
    /// The codec's HTTP/1.1 client's.
    Codec(BridgeError),
}

impl SendError {
    /// The upstream refused the one request as malformed on a connection that goes on (an
    /// HTTP/2 stream reset with PROTOCOL_ERROR).
    pub fn is_refused(&self) -> bool {
        matches!(self, SendError::H2(error) if error.is_refused())
    }

    /// No connection could be made (nothing was sent: safe to try elsewhere).
    pub fn is_connect(&self) -> bool {
        match self {
            SendError::Http1(error) => error.is_connect(),
            SendError::H2(error) => error.is_connect(),
            SendError::Codec(error) => error.is_connect(),
        }
    }

    /// The request back, when nothing of it was sent.
    pub fn into_unsent(self) -> Option<Request<Body>> {
        match self {
            SendError::Http1(error) => error.into_unsent(),
            SendError::H2(error) => error.into_unsent(),
            SendError::Codec(error) => error.into_unsent(),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Http1(error) => error.fmt(f),
            SendError::H2(error) => error.fmt(f),
            SendError::Codec(error) => error.fmt(f),
        }
    }
}

/// Which HTTP/1.1 client talks to HTTP/1.1 upstreams (`http1_codec`).
#[derive(Clone, Copy)]
pub enum Http1Client<'a> {
    /// hyper's.
    Hyper(&'a Upstream),
    /// The gateway's own codec, with the time each read of a response body may take.
    Codec(&'a Arc<crate::h1::client::Pool>, Duration),
}

/// The forward phase's one call: `request` to `endpoint` over HTTP/2 when `h2` is given (the
/// serving region's pool asks for it), else over HTTP/1.1. Pool choice, retries, deadlines and
/// health stay the forward phase's, the same for both.
pub async fn send(
    http1: Http1Client<'_>,
    h2: Option<&H2Upstream>,
    upstream: &EndpointState,
    request: Request<Body>,
) -> Result<Response<UpstreamBody>, SendError> {
    let endpoint = &upstream.authority;
    match (h2, http1) {
        (Some(h2), _) => h2
            .send(endpoint, &upstream.connector, request)
            .await
            .map(|response| response.map(UpstreamBody::H2))
            .map_err(SendError::H2),
        (None, Http1Client::Codec(pool, body_timeout)) => {
            crate::h1::bridge::send(pool, upstream.id, endpoint.as_str(), request, body_timeout)
                .await
                .map(|response| response.map(UpstreamBody::Codec))
                .map_err(SendError::Codec)
        }
        (None, Http1Client::Hyper(http1)) => http1
            .send(endpoint, request)
            .await
            .map(|response| response.map(UpstreamBody::Http1))
            .map_err(SendError::Http1),
    }
}

/// One health check of an HTTP/2 endpoint: a GET of `path` over the pool's HTTP/2 client, any
/// 2xx healthy.
pub async fn check(
    h2: &H2Upstream,
    endpoint: &Authority,
    connector: &Arc<Connector>,
    path: &str,
) -> bool {
    let Ok(request) = Request::get(path)
        .header(header::USER_AGENT, "unitgate-health-check")
        .body(crate::upstream::empty())
    else {
        return false;
    };
    matches!(h2.send(endpoint, connector, request).await, Ok(response) if response.status().is_success())
}

#[cfg(test)]
fn header_map(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_leave_as_http2_with_the_routed_authority_and_no_connection_fields() {
        let mut request = Request::post("/pkg.Svc/Call")
            .body(crate::upstream::empty())
            .expect("request");
        *request.headers_mut() = header_map(&[
            ("host", "api.example:443"),
            ("content-type", "application/grpc+proto"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("x-user-id", "4321"),
        ]);
        let endpoint = Authority::from_static("10.0.0.1:50051");
        let request = into_h2(request, &endpoint, false);
        assert_eq!(request.version(), Version::HTTP_2);
        assert_eq!(request.uri(), "http://api.example:443/pkg.Svc/Call");
        let headers = request.headers();
        assert!(headers.get(header::HOST).is_none());
        for name in &CONNECTION_SPECIFIC {
            assert!(headers.get(name).is_none(), "{name}");
        }
        assert_eq!(headers[header::TE], "trailers");
        assert_eq!(headers["x-user-id"], "4321");
        // Handed back unsent and sent to another endpoint: the same request.
        let again = into_h2(request, &Authority::from_static("10.0.0.2:50051"), false);
        assert_eq!(again.uri(), "http://api.example:443/pkg.Svc/Call");
        assert_eq!(again.headers()[header::TE], "trailers");

        // No Host: the endpoint names itself; not gRPC: no TE, and a TE other than
        // `trailers` goes.
        let mut request = Request::get("/health?deep=1")
            .body(crate::upstream::empty())
            .expect("request");
        *request.headers_mut() = header_map(&[("te", "gzip")]);
        let request = into_h2(request, &endpoint, false);
        assert_eq!(request.uri(), "http://10.0.0.1:50051/health?deep=1");
        assert!(request.headers().get(header::TE).is_none());
        // Handed back unsent and sent to another endpoint: that one names itself.
        let again = into_h2(request, &Authority::from_static("10.0.0.2:50051"), false);
        assert_eq!(again.uri(), "http://10.0.0.2:50051/health?deep=1");
    }
}
