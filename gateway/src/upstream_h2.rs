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
//! A request the upstream did not process (a stream reset with REFUSED_STREAM, or one above a
//! GOAWAY's last stream id) is handed back to be sent elsewhere when it can be made again: its
//! body empty, held whole ([`held`]), or streamed and recorded as it went, all of it that left
//! the client still kept ([`recorded`]).
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
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use router_rules::table::RegionIndex;
use router_rules::{CompiledTable, UpstreamProtocol};

use crate::attempts::UpstreamFault;
use crate::client_body::{RecordedBody, Recording};
use crate::config::Timeouts;
use crate::connect::Connector;
use crate::h1::bridge::BridgeError;
use crate::limits::BodyHold;
use crate::store::EndpointState;
use crate::upstream::{Body, BoxError, PooledBody, Upstream, UpstreamError};

/// The most bytes of a streamed request body kept to send it again ([`recorded`]), per
/// request: gRPC's unary calls, and the first messages of streaming ones, fit many times over
/// (Envoy keeps as much by default for its retries); a larger body streams on without a copy.
pub const MAX_RECORDED_BODY_BYTES: u64 = 64 * 1024;

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
    /// The request, when it may be sent elsewhere as it is: nothing of it was sent (no
    /// connection), or the upstream left it unprocessed and it could be made again.
    unsent: Option<Request<Body>>,
    kind: H2Failure,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H2Failure {
    /// No connection could be had.
    Connect,
    /// The upstream did not process the request (RFC 9113 section 8.7): it refused the stream.
    Unprocessed,
    /// The upstream did not process the request because it is closing the connection
    /// (GOAWAY): the connection takes no new request, another one may.
    GoneAway,
    /// The upstream reset the request's stream as malformed (not the connection).
    Refused,
    /// Anything else after the request went out.
    Broken,
}

impl H2Error {
    /// The upstream reset this request's stream as malformed, its connection going on: it
    /// refused the one request (a field it found malformed), which says nothing about the
    /// endpoint.
    pub fn is_refused(&self) -> bool {
        self.kind == H2Failure::Refused
    }

    /// The upstream did not process the request: it reset the stream with REFUSED_STREAM, or
    /// its GOAWAY's last stream id is below the request's stream (or came before the stream
    /// was opened). [`H2Error::into_unsent`] gives it back when its body was empty, held whole
    /// ([`held`]), or recorded with all of it that was sent ([`recorded`]); any other
    /// streamed body is gone.
    pub fn is_unprocessed(&self) -> bool {
        matches!(self.kind, H2Failure::Unprocessed | H2Failure::GoneAway)
    }

    /// No connection could be made (nothing was sent: safe to try elsewhere).
    pub fn is_connect(&self) -> bool {
        self.kind == H2Failure::Connect
    }

    /// The request back, when it may be sent again as it is.
    pub fn into_unsent(self) -> Option<Request<Body>> {
        self.unsent
    }
}

impl std::fmt::Debug for H2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Error")
            .field("kind", &self.kind)
            .field("unsent", &self.unsent.is_some())
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
    /// The open connection and its id, if it is still usable and was made as `connector`
    /// makes them.
    fn sender(&self, connector: &Arc<Connector>) -> Option<(SendRequest<Body>, u64)> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.as_ref()
            .filter(|o| {
                !o.sender.is_closed()
                    && (Arc::ptr_eq(&o.connector, connector) || o.connector.same_as(connector))
            })
            .map(|o| (o.sender.clone(), o.id))
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
            let (mut sender, id) = match slot.sender(connector) {
                Some(open) => open,
                None => match self.pool.connect(&slot, endpoint, connector).await {
                    Ok(sender) => sender,
                    Err(message) => {
                        return Err(H2Error {
                            unsent: Some(request),
                            kind: H2Failure::Connect,
                            message,
                        });
                    }
                },
            };
            slot.last_used.store(self.pool.now_ms(), Ordering::Relaxed);
            // hyper gives a request back only when its connection never took it; one the
            // upstream leaves unprocessed is gone with its stream, so a copy is kept of any that
            // could be sent again.
            let copy = copy_of(&request);
            // A recorded body's copies are let go when this attempt ends any other way than
            // with the request to be sent again: the upstream answered (the answer's head is
            // in, so nothing of the request will go again), failed it, or ran out of time.
            let mut recording = StopRecording(
                copy.as_ref()
                    .and_then(|copy| copy.extensions().get::<Recording>())
                    .cloned(),
            );
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => {
                        recording.keep();
                        request = unsent;
                    }
                    None => {
                        let error = error.into_error();
                        let kind = failure_of(&error);
                        if kind == H2Failure::GoneAway {
                            // A draining upstream's connection serves its streams to the end
                            // but takes no new one: the next request (this one, sent again
                            // included) makes a new connection, to an instance still there.
                            slot.retire(id);
                        }
                        let unprocessed =
                            matches!(kind, H2Failure::Unprocessed | H2Failure::GoneAway);
                        if unprocessed {
                            recording.keep();
                        }
                        let unsent = copy.filter(|_| unprocessed).and_then(from_copy);
                        // hyper's own words ("http2 error") say little: the frame's do.
                        let mut message = match std::error::Error::source(&error) {
                            Some(cause) => format!("{endpoint}: {error}: {cause}"),
                            None => format!("{endpoint}: {error}"),
                        };
                        if unprocessed && unsent.is_none() {
                            message.push_str(
                                "; the request's body was not kept whole to send it again (it streamed past what is kept, or the buffered-body budget was short)",
                            );
                        }
                        return Err(H2Error {
                            unsent,
                            kind,
                            message,
                        });
                    }
                },
            }
        }
        Err(H2Error {
            unsent: Some(request),
            kind: H2Failure::Connect,
            message: format!("{endpoint}: HTTP/2 connections closed before taking the request"),
        })
    }
}

/// A request body the gateway holds whole (an HTTP/1.1 client's, read before it goes to an
/// `h2` pool), kept beside the request so that it can be sent again.
#[derive(Clone)]
struct Held {
    data: Bytes,
    trailers: Option<http::HeaderMap>,
}

impl Held {
    fn body(&self) -> Body {
        Full::new(self.data.clone())
            .map_err(|never| match never {})
            .with_trailers(std::future::ready(self.trailers.clone().map(Ok)))
            .boxed()
    }
}

/// `head` with a body held whole, `data` then `trailers`: a request that can be sent to another
/// endpoint should the upstream leave it unprocessed.
pub fn held(
    head: http::request::Parts,
    data: Bytes,
    trailers: Option<http::HeaderMap>,
) -> Request<Body> {
    let held = Held { data, trailers };
    let body = held.body();
    let mut request = Request::from_parts(head, body);
    request.extensions_mut().insert(held);
    request
}

/// `head` with a client's streamed body, which goes on to the upstream as it comes and is
/// recorded as it goes, up to [`MAX_RECORDED_BODY_BYTES`] held through `hold` (the gateway's
/// body budget): a request that can be sent to another endpoint should the upstream leave it
/// unprocessed, as long as all of its body that left the client is still kept. The copies are
/// let go once the upstream answers.
pub fn recorded(head: http::request::Parts, body: Body, hold: BodyHold) -> Request<Body> {
    let (body, recording) = RecordedBody::new(body, MAX_RECORDED_BODY_BYTES, hold);
    let mut request = Request::from_parts(head, body.boxed());
    request.extensions_mut().insert(recording);
    request
}

/// Ends a recorded body's recording when dropped, unless kept.
struct StopRecording(Option<Recording>);

impl StopRecording {
    /// The request goes again: its copies too.
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for StopRecording {
    fn drop(&mut self) {
        if let Some(recording) = self.0.take() {
            recording.stop();
        }
    }
}

/// A copy of `request`'s head, when the request could be made again: its body is empty, held
/// whole ([`held`]), or recorded with all of it that left the client ([`recorded`]); any
/// other streamed body cannot be had twice.
fn copy_of(request: &Request<Body>) -> Option<Request<()>> {
    let extensions = request.extensions();
    if !hyper::body::Body::is_end_stream(request.body())
        && extensions.get::<Held>().is_none()
        && !extensions
            .get::<Recording>()
            .is_some_and(Recording::can_replay)
    {
        return None;
    }
    let mut copy = Request::new(());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

/// The request [`copy_of`] copied, whole again; `None` when its recorded body went past what
/// is kept while the copy was out.
fn from_copy(copy: Request<()>) -> Option<Request<Body>> {
    let extensions = copy.extensions();
    let body = if let Some(held) = extensions.get::<Held>() {
        held.body()
    } else if let Some(recording) = extensions.get::<Recording>() {
        recording.replay()?.boxed()
    } else {
        crate::upstream::empty()
    };
    Some(copy.map(|()| body))
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
    ) -> Result<(SendRequest<Body>, u64), String> {
        let waiting_since = Instant::now();
        let mut connecting = slot.connecting.lock().await;
        if let Some(open) = slot.sender(connector) {
            return Ok(open);
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
                Ok((sender, id))
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

/// What a failed stream says, by what the upstream sent:
/// - unprocessed: it reset the stream with REFUSED_STREAM;
/// - gone away: it sent a GOAWAY. h2 gives the peer's GOAWAY only to the streams above its
///   last stream id and to requests made after it arrived (streams at or below it that the
///   connection's end cuts off get a broken pipe), so the upstream did nothing with the
///   request either (RFC 9113 section 8.7);
/// - refused: it reset the one stream as malformed (PROTOCOL_ERROR), its connection going on;
/// - broken: anything else (other resets, connection failures), which says something about
///   the endpoint.
fn failure_of(error: &hyper::Error) -> H2Failure {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return match h2.reason() {
                _ if !h2.is_remote() => H2Failure::Broken,
                _ if h2.is_go_away() => H2Failure::GoneAway,
                Some(h2::Reason::REFUSED_STREAM) => H2Failure::Unprocessed,
                Some(h2::Reason::PROTOCOL_ERROR) => H2Failure::Refused,
                _ => H2Failure::Broken,
            };
        }
        source = cause.source();
    }
    H2Failure::Broken
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
    /// The forward phase's view of the failure, with the request back when it may be sent
    /// again as it is (for [`crate::attempts::Attempts::after`] to decide whether it goes on).
    pub(crate) fn into_fault(self) -> (UpstreamFault, Option<Request<Body>>) {
        let message = self.to_string();
        match self {
            SendError::H2(error) => match error.kind {
                H2Failure::Connect => (UpstreamFault::Connect(message), error.unsent),
                H2Failure::Unprocessed | H2Failure::GoneAway => {
                    (UpstreamFault::Unprocessed(message), error.unsent)
                }
                H2Failure::Refused => (UpstreamFault::Refused(message), None),
                H2Failure::Broken => (UpstreamFault::Broken(message), None),
            },
            SendError::Http1(error) if error.is_connect() => {
                (UpstreamFault::Connect(message), error.into_unsent())
            }
            SendError::Codec(error) if error.is_connect() => {
                (UpstreamFault::Connect(message), error.into_unsent())
            }
            SendError::Codec(error) if error.is_stale() => (UpstreamFault::Stale(message), None),
            SendError::Http1(_) | SendError::Codec(_) => (UpstreamFault::Broken(message), None),
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
