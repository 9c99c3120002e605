//! The request path, in phases (as pingora's `ProxyHttp` lays them out):
//!
//! 1. **limits** — refuse unsafe framing and oversize requests before anything else;
//! 2. **load** — take the table in force once (one atomic load); it decides everything below;
//! 3. **resolve** — `CompiledTable::resolve`, the same code as `unitctl route`;
//! 4. **admit** — no route (404), missing key (400), write-frozen (503), flow control (429),
//!    forwarding loops (508);
//! 5. **pick** — this region's pool (health-aware round robin or key affinity), or another
//!    region's gateways (error correction, with an authenticated hop marker);
//! 6. **forward** — with timeouts, retrying idempotent requests on connect failure, and any
//!    request an HTTP/2 upstream left unprocessed, within the same region only;
//! 7. **respond** and **log** — one access-log line and the metrics, per request.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use router_rules::table::RegionIndex;
use router_rules::{Action, Class, METHOD_OVERRIDE_FIELDS, RequestView};
use serde_json::json;

use crate::attempts::{Attempts, UpstreamFault, may_resend};
use crate::client_body::{BodyFault, BodyState, ClientBody};
use crate::coarse_timer::CoarseTimer;
use crate::config::{GatewayConfig, Http1Codec, RoutingKeyLog};
use crate::decide::{Decided, Facts, decide};
use crate::framing::Verdicts;
use crate::grpc;
use crate::headers::{
    RequestHeaders, TRACEPARENT, TraceParent, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_UNITGATE_CLASS,
    X_UNITGATE_HOP, X_UNITGATE_KEY, X_UNITGATE_REGION, X_UNITGATE_SLOT, X_UNITGATE_STRESS,
    X_UNITGATE_TABLE_VERSION, X_UNITGATE_UNIT, check_request_line, header_safe,
    is_other_forwarding, strip_hop_by_hop, strip_internal_headers,
};
use crate::hop::{HopKey, HopMarker, KeyHasher};
use crate::limits::{Permits, Refusal};
use crate::metrics::{ClientEvent, Hop, Metrics, NONE, RequestLabels, UpstreamFailure};
use crate::store::{PoolState, Snapshot, TableStore, WRITE_ENDED, WriteInFlight};
use crate::upstream::{Body, Upstream, empty};
use crate::upstream_h2::{self, H2Upstream, UpstreamBody};
use control_api::throttle::LogThrottle;
use tokio_util::sync::WaitForCancellationFutureOwned;

/// What every request handler shares.
pub struct Shared {
    /// Which proxy worker this is (`gateway::workers`).
    pub worker: usize,
    /// The worker's timeouts.
    pub timer: CoarseTimer,
    /// The table in force.
    pub store: Arc<TableStore>,
    /// Upstream client.
    pub upstream: Upstream,
    /// Upstream connections of the gateway's own HTTP/1.1 codec.
    pub codec_upstream: Arc<crate::h1::client::Pool>,
    /// Upstream client for pools that speak HTTP/2 (`protocol: h2`).
    pub upstream_h2: H2Upstream,
    /// Hop-marker key.
    pub hop: HopKey,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Gateway configuration.
    pub config: GatewayConfig,
    /// How the access log shows routing keys.
    pub key_log: KeyLog,
    /// The stress-test marker header.
    pub stress_header: HeaderName,
    /// Set when the gateway stops: HTTP/1 responses then carry `Connection: close`, so
    /// clients move to another connection (and process) instead of racing a close.
    pub draining: std::sync::atomic::AtomicBool,
    /// Memory for request bodies held whole, shared by every worker.
    pub body_budget: Arc<crate::limits::BodyBudget>,
}

/// How the access log shows routing keys (`access_log.routing_key`).
#[derive(Clone)]
pub enum KeyLog {
    /// As found, in `key`.
    AsIs,
    /// Hashed, in `key_hash`; and a path segment it came from is logged as `{key}`.
    Hashed(KeyHasher),
    /// Not at all; a path segment it came from is logged as `{key}`.
    Omitted,
}

impl KeyLog {
    /// The access log's way for `mode`, hashing under `hop_secret`.
    pub fn new(mode: RoutingKeyLog, hop_secret: &[u8]) -> Self {
        match mode {
            RoutingKeyLog::AsIs => KeyLog::AsIs,
            RoutingKeyLog::Hashed => KeyLog::Hashed(KeyHasher::from_hop_secret(hop_secret)),
            RoutingKeyLog::Omitted => KeyLog::Omitted,
        }
    }
}

/// `path` with its `n`th non-empty segment (from 1, as key sources count them) replaced by
/// `{key}`.
pub(crate) fn without_segment(path: &str, n: u32) -> String {
    let mut seen = 0;
    path.split('/')
        .map(|segment| {
            if !segment.is_empty() {
                seen += 1;
                if seen == n {
                    return "{key}";
                }
            }
            segment
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Peer address.
    pub peer: SocketAddr,
    /// The peer's IP address as a header value, made once per connection.
    pub peer_ip: HeaderValue,
    /// Whether it is TLS.
    pub tls: bool,
    /// The connection's framing watch: told when the connection becomes a tunnel.
    pub watch: Verdicts,
    /// The peer is one of `trusted_proxies`: its `X-Forwarded-*` headers are kept.
    pub trusted_proxy: bool,
}

impl Conn {
    /// A connection from `peer`, watched by `watch`; `config` says whether it is a trusted
    /// proxy.
    pub fn new(peer: SocketAddr, tls: bool, watch: Verdicts, config: &GatewayConfig) -> Self {
        Self {
            peer,
            peer_ip: ip_text(peer.ip()),
            tls,
            watch,
            trusted_proxy: config
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&peer.ip())),
        }
    }
}

/// `ip` as a field value. An IPv4 address is written digit by digit: through `Display` it
/// costs about 700 instructions, a tenth of what a new connection costs the gateway itself.
fn ip_text(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        for (digit, shown) in [(octet / 100, octet >= 100), (octet / 10 % 10, octet >= 10)] {
            if shown {
                text[len] = b'0' + digit;
                len += 1;
            }
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&text[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// What a request learnt on its way, for the response, the log and the metrics.
pub(crate) struct Ctx {
    pub(crate) start: Instant,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) trace: Option<TraceParent>,
    pub(crate) version: u64,
    pub(crate) route: Option<usize>,
    pub(crate) class: Option<Class>,
    pub(crate) unit: Option<usize>,
    pub(crate) region: Option<RegionIndex>,
    pub(crate) slot: Option<u32>,
    /// The routing key as the access log shows it: as found, or hashed.
    pub(crate) key: Option<String>,
    pub(crate) hops_in: u8,
    pub(crate) forwarded_to: Option<RegionIndex>,
    pub(crate) upstream: Option<Arc<str>>,
    pub(crate) stress: bool,
    /// When the client's own deadline (`grpc-timeout`) runs out.
    pub(crate) client_deadline: Option<Instant>,
    /// The path as routed and sent upstream, when normalizing changed the client's
    /// (`router_rules::path::normalize`).
    pub(crate) normalized_path: Option<String>,
    /// Whether the request may be sent again (`attempts::may_resend`): its method is
    /// idempotent, and so is any its method-override fields name.
    pub(crate) resendable: bool,
    /// Whether the client's connection may be inside an answer (the gateway's HTTP/1.1
    /// codec): the final answer's first bytes may have gone out, or an interim answer is
    /// going out. A write the gateway ends then can only be cut off, not answered.
    pub(crate) answer_begun: bool,
}

impl Ctx {
    /// A request's context as it starts; `path` is copied only when the access log needs it.
    pub(crate) fn new(shared: &Shared, method: Method, path: &str) -> Self {
        Self {
            start: Instant::now(),
            method,
            path: if shared.config.access_log.enabled {
                path.to_owned()
            } else {
                String::new()
            },
            trace: None,
            version: 0,
            route: None,
            class: None,
            unit: None,
            region: None,
            slot: None,
            key: None,
            hops_in: 0,
            forwarded_to: None,
            upstream: None,
            stress: false,
            client_deadline: None,
            normalized_path: None,
            resendable: false,
            answer_begun: false,
        }
    }
}

/// A response the gateway makes itself.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: serde_json::Value,
    pub(crate) retry_after_s: Option<u64>,
    pub(crate) close: bool,
}

impl Reply {
    pub(crate) fn new(status: StatusCode, body: serde_json::Value) -> Self {
        Self {
            status,
            body,
            retry_after_s: None,
            close: false,
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut response = Response::new(
            Full::new(bytes::Bytes::from(self.body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(s) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Serve one request. Never fails: every error becomes a JSON response.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Conn,
    request: Request<Incoming>,
    smuggling: bool,
) -> Result<Response<Body>, Infallible> {
    let mut ctx = Ctx::new(&shared, request.method().clone(), request.uri().path());
    let http1 = request.version() < Version::HTTP_2;
    // A gRPC client reads the gateway's own answers from `grpc-status` (`grpc::trailers_only`).
    let grpc = grpc::is_grpc(request.headers());
    // The table in force, loaded once: it decides this request from start to end, and the
    // metrics and the log line name what it decided.
    let snapshot = shared.store.current();
    // The table in force when the request was decided again (`decide`), if it was.
    let mut newer = None;
    let decided = proxy(
        &shared,
        &conn,
        &mut ctx,
        snapshot.as_deref(),
        &mut newer,
        request,
        smuggling,
    );
    let mut response = match decided.await {
        Ok(response) => response,
        Err(reply) if grpc => grpc::trailers_only(reply.status, &reply.body),
        Err(reply) => reply.into_response(),
    };
    if http1 && shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let decided_by = newer.as_deref().or(snapshot.as_deref());
    finish(&shared, &ctx, decided_by, &conn, response.status());
    Ok(response)
}

async fn proxy(
    shared: &Shared,
    conn: &Conn,
    ctx: &mut Ctx,
    snapshot: Option<&Snapshot>,
    newer: &mut Option<Arc<Snapshot>>,
    mut request: Request<Incoming>,
    smuggling: bool,
) -> Result<Response<Body>, Reply> {
    // Phase 1: limits and framing.
    let seen = check(shared, &mut request, smuggling)?;
    if normalize_path(shared, &mut request)? && shared.config.access_log.enabled {
        ctx.path = request.uri().path().to_owned();
    }
    let on_client_upgrade = seen.is_upgrade().then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();

    // Phases 2 to 5: load, resolve, admit, pick.
    let facts = Facts {
        hop: seen.hop.as_ref().map(HeaderValue::as_bytes),
        traceparent: seen.traceparent.as_ref().map(HeaderValue::as_bytes),
        stress: seen.stress,
        content_length: seen.content_length(),
        grpc_timeout: parts
            .headers
            .get(grpc::GRPC_TIMEOUT)
            .map(HeaderValue::as_bytes),
    };
    let view = PartsView(&parts);
    ctx.resendable = may_resend(&parts.method, view.method_overrides());
    let mut decided = decide(shared, ctx, snapshot, newer, &view, &facts)?;
    // Held to the end of the answer: the request is in flight until then.
    let permits = std::mem::take(&mut decided.permits);

    // Phase 6: forward.
    let write_end = permits.2.as_ref().map(WriteInFlight::ended);
    let outbound = prepare(shared, conn, ctx, parts, body, write_end, &seen, &decided);
    let exchanging = exchange(shared, ctx, outbound);
    let response = match permits.2.as_ref().map(WriteInFlight::ended) {
        None => exchanging.await?,
        Some(ended) => tokio::select! {
            // First: the body fails on the same signal, and the exchange with it.
            biased;
            () = ended => return Err(write_ended(shared)),
            response = exchanging => response?,
        },
    };

    // Phase 7: respond.
    let idle = shared.config.timeouts.tunnel_idle();
    Ok(respond(
        conn,
        response,
        on_client_upgrade,
        permits,
        idle,
        &shared.metrics,
    ))
}

/// Put the request's path in the form a server acts on (`router_rules::path::normalize`): it
/// is routed, signed and sent upstream so. `true` when that changed it.
fn normalize_path<B>(shared: &Shared, request: &mut Request<B>) -> Result<bool, Reply> {
    let refuse = |why: &str| {
        shared
            .metrics
            .malformed_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Reply::new(StatusCode::BAD_REQUEST, json!({ "error": why }))
    };
    let uri = request.uri();
    // `Uri::path` says `/` for an HTTP/2 `:path` of a query alone (`?x=1`), which would go
    // upstream as it came: the target as sent is what must start with `/`.
    if let Some(target) = uri.path_and_query() {
        let target = target.as_str();
        if target == "*" && request.method() != Method::OPTIONS {
            // As the codec's front end: `*` names no resource but the server, for OPTIONS.
            return Err(refuse(
                "asterisk-form target for a method other than OPTIONS",
            ));
        }
        if !(target.starts_with('/') || target == "*") {
            return Err(refuse(router_rules::path::PathError::NotAbsolute.as_str()));
        }
        // The `http` crate lets `"{}|^` through; the codec's front end refuses
        // them as RFC 3986 does, and so does this one.
        if !target.bytes().all(crate::h1::fields::is_target_byte) {
            return Err(refuse("invalid request target"));
        }
    }
    let path = match router_rules::path::normalize(uri.path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(false),
        Ok(std::borrow::Cow::Owned(path)) => path,
        Err(error) => return Err(refuse(error.as_str())),
    };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| refuse("request target not valid once normalized"))?,
    );
    *request.uri_mut() = http::Uri::from_parts(parts)
        .map_err(|_| refuse("request target not valid once normalized"))?;
    Ok(true)
}

/// Phase 1: refuse what cannot be forwarded safely — ambiguous framing, a bad request line,
/// too many headers — before anything is looked up, and leave only the client's own headers
/// (HTTP/2's split cookies joined). What was seen of the headers serves the phases after.
fn check(
    shared: &Shared,
    request: &mut Request<Incoming>,
    smuggling: bool,
) -> Result<RequestHeaders, Reply> {
    let seen = RequestHeaders::of(request.headers(), &shared.stress_header);
    let framing = if smuggling {
        Err("both Content-Length and Transfer-Encoding")
    } else {
        seen.check_framing()
    };
    framing.map_err(|why| {
        shared
            .metrics
            .malformed_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        framing_refusal(why)
    })?;
    if seen.malformed_value {
        // Passed on, it could make a strict upstream reset the connection every other request
        // shares, and count against a healthy endpoint.
        shared
            .metrics
            .malformed_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(Reply::new(
            StatusCode::BAD_REQUEST,
            json!({"error": "malformed header value: whitespace at an end, or NUL, CR or LF"}),
        ));
    }
    check_request_line(request.method(), request.version(), request.uri(), &seen).map_err(
        |(status, why)| {
            shared
                .metrics
                .malformed_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Reply::new(status, json!({"error": why}))
        },
    )?;
    if seen.cookies > 1 && request.version() >= Version::HTTP_2 {
        join_cookies(request.headers_mut());
    }
    let limits = shared.config.limits;
    if request.headers().len() > limits.max_header_count {
        return Err(Reply::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            json!({"error": "too many headers", "limit": limits.max_header_count}),
        ));
    }
    if seen.internal {
        strip_internal_headers(request.headers_mut());
    }
    Ok(seen)
}

/// A decided request made ready for the next hop, and where it may go.
struct Outbound<'a> {
    request: Request<Body>,
    /// The client's body as it is relayed: tells a failed exchange that was the client's
    /// doing from one that was the upstream's.
    body: Arc<BodyState>,
    /// The endpoints it may go to.
    attempts: Attempts<'a>,
    http1: upstream_h2::Http1Client<'a>,
    /// Set when the serving region's pool speaks HTTP/2.
    h2: Option<&'a H2Upstream>,
}

/// The upstream request for a decided one: forwarding headers, then the unit headers for this
/// region's pool or a signed hop marker for another region's gateways, in origin form.
#[allow(clippy::too_many_arguments)]
fn prepare<'a>(
    shared: &'a Shared,
    conn: &Conn,
    ctx: &Ctx,
    mut parts: Parts,
    body: Incoming,
    write_end: Option<WaitForCancellationFutureOwned>,
    seen: &RequestHeaders,
    decided: &'a Decided<'a>,
) -> Outbound<'a> {
    let Decided {
        snapshot,
        route,
        routed,
        target,
        hop_in,
        trace,
        ..
    } = decided;
    let table = &snapshot.table;
    let trusted = conn.trusted_proxy || hop_in.is_some();
    forwarding_headers(&mut parts, seen, seen.is_upgrade(), conn, trusted, trace);
    match *target {
        Target::Local(_) => {
            add_unit_headers(
                &mut parts.headers,
                snapshot,
                routed,
                route.class,
                ctx.stress,
            );
        }
        Target::Region(_) => {
            let marker = HopMarker {
                origin: hop_in.as_ref().map_or_else(
                    || table.regions()[snapshot.region].name.to_string(),
                    |m| m.origin.clone(),
                ),
                version: ctx.version,
                hops: ctx.hops_in + 1,
            };
            let value = shared
                .hop
                .sign(&marker, parts.method.as_str(), parts.uri.path());
            parts.headers.insert(X_UNITGATE_HOP, value);
            if ctx.stress {
                parts
                    .headers
                    .insert(shared.stress_header.clone(), HeaderValue::from_static("1"));
            }
        }
    }
    if let Some(deadline) = ctx.client_deadline
        && let Ok(left) = HeaderValue::from_str(&grpc::time_left(deadline))
    {
        parts.headers.insert(grpc::GRPC_TIMEOUT, left);
    }
    parts.uri = upstream_uri(parts.uri.path_and_query());
    parts.version = Version::HTTP_11;
    // HTTP/2 when the serving region's pool asks for it (gRPC), to its endpoints or to its
    // gateways: `upstream_h2` makes the request an HTTP/2 one.
    let h2 = decided.over_h2().then_some(&shared.upstream_h2);
    // With the codec serving HTTP/1.1, HTTP/2 clients' requests go upstream over its client
    // too; with hyper's (the reference), over hyper's, upgrades and all.
    let http1 = match shared.config.http1_codec {
        Http1Codec::Own => {
            upstream_h2::Http1Client::Codec(&shared.codec_upstream, shared.config.timeouts.read())
        }
        Http1Codec::Hyper => upstream_h2::Http1Client::Hyper(&shared.upstream),
    };
    let key_headers = decided.key_headers(!hyper::body::Body::is_end_stream(&body));
    let (client_body, body_state) = ClientBody::new(
        body,
        shared.config.limits.max_body_bytes,
        key_headers,
        write_end,
    );
    // A body to an HTTP/2 pool is recorded as it streams, so that the request can go again if
    // the upstream leaves it unprocessed (REFUSED_STREAM, GOAWAY), as an empty one can.
    let request = if h2.is_some() && !hyper::body::Body::is_end_stream(&client_body) {
        upstream_h2::recorded(parts, client_body.boxed(), shared.body_budget.hold())
    } else {
        Request::from_parts(parts, client_body.boxed())
    };
    Outbound {
        request,
        body: body_state,
        attempts: Attempts::new(shared, ctx, decided),
        http1,
        h2,
    }
}

/// Send the request to the pool's endpoints in turn until one answers (`crate::attempts`
/// decides which, and by when).
async fn exchange(
    shared: &Shared,
    ctx: &mut Ctx,
    outbound: Outbound<'_>,
) -> Result<Response<UpstreamBody>, Reply> {
    let Outbound {
        mut request,
        body,
        mut attempts,
        http1,
        h2,
    } = outbound;
    let Some(mut chosen) = attempts.next() else {
        return Err(attempts.no_endpoint());
    };
    loop {
        let (index, endpoint) = chosen;
        if shared.config.access_log.enabled {
            ctx.upstream = Some(endpoint.address.clone());
        }
        let result = shared
            .timer
            .timeout_at(
                attempts.deadline(),
                upstream_h2::send(http1, h2, endpoint, request),
            )
            .await;
        let (fault, unsent) = match result {
            Ok(Ok(response)) => {
                endpoint.health.success();
                return Ok(response);
            }
            Ok(Err(error)) => error.into_fault(),
            Err(_) => (UpstreamFault::Timeout, None),
        };
        let failure = match fault {
            UpstreamFault::Connect(_) => UpstreamFailure::Connect,
            UpstreamFault::Timeout => UpstreamFailure::Timeout,
            UpstreamFault::Broken(_) | UpstreamFault::Refused(_) => UpstreamFailure::Other,
            UpstreamFault::Stale(_) => UpstreamFailure::Stale,
            UpstreamFault::Unprocessed(_) => UpstreamFailure::Unprocessed,
        };
        if let Some(reply) = client_fault(&shared.metrics, &body, failure) {
            return Err(reply);
        }
        match attempts.after(shared, endpoint, &fault, unsent) {
            Some((next, unsent)) => {
                request = unsent;
                chosen = next;
            }
            None => return Err(attempts.failed(shared, index, fault)),
        }
    }
}

/// The answer to a write the gateway ended before its answer came: a newer table moved or froze
/// its unit, and the write outlasted its grace (`TableStore::end_held_writes`).
fn write_ended(shared: &Shared) -> Reply {
    shared.metrics.writes_ended.fetch_add(1, Ordering::Relaxed);
    write_ended_reply()
}

/// The `503` of a write the gateway ended, uncounted.
pub(crate) fn write_ended_reply() -> Reply {
    let mut reply = Reply::new(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": WRITE_ENDED, "retry_after_s": WRITE_FREEZE_RETRY_S}),
    );
    reply.retry_after_s = Some(WRITE_FREEZE_RETRY_S);
    reply.close = true;
    reply
}

/// Phase 7: the upstream's answer for the client. A `101` to an upgrade request turns both
/// connections into one tunnel; any other answer goes on without its hop-by-hop headers.
fn respond(
    conn: &Conn,
    mut response: Response<UpstreamBody>,
    on_client_upgrade: Option<OnUpgrade>,
    permits: Permits,
    tunnel_idle: Duration,
    metrics: &Arc<Metrics>,
) -> Response<Body> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(on_client_upgrade) = on_client_upgrade
    {
        let on_upstream_upgrade = hyper::upgrade::on(&mut response);
        // From here on the client's bytes are tunnel data, not requests.
        conn.watch.tunnel_established();
        tokio::spawn(async move {
            // A tunnel is in flight for as long as it is open.
            let _permits = permits;
            if let (Ok(client), Ok(upstream)) = (on_client_upgrade.await, on_upstream_upgrade.await)
            {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                crate::tunnel::relay(&mut client, &mut upstream, tunnel_idle).await;
            }
        });
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, empty());
    }
    strip_hop_by_hop(response.headers_mut(), false);
    let grpc = grpc::is_grpc(response.headers());
    let (parts, body) = response.into_parts();
    let end = permits.2.as_ref().map(WriteInFlight::ended);
    let in_flight = InFlight {
        body,
        _permits: permits,
    };
    let body = match end {
        None => in_flight.boxed(),
        Some(end) => EndableAnswer::new(in_flight, end, grpc, metrics.clone()).boxed(),
    };
    Response::from_parts(parts, body)
}

/// An answer's body that keeps its request counted in flight (its flow-control permits) until
/// the body ends or is dropped, as the codec's path does.
struct InFlight {
    body: UpstreamBody,
    _permits: Permits,
}

impl hyper::body::Body for InFlight {
    type Data = bytes::Bytes;
    type Error = crate::upstream::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// A write's answer, which the gateway ends before its body did when a newer table moved or
/// froze its unit and the write outlasted its grace ([`crate::store::WriteInFlight::ended`]).
/// A task of its own ends it, not a poll of this body: a client that stops reading leaves no
/// send window, and hyper then does not poll the body at all, yet the flip waiting on the
/// write must go on. The task lets the upstream go and the write's count with it; the client
/// hears of it as it reads on: a gRPC call ends with `UNAVAILABLE` in its trailers (clients
/// retry it), any other answer breaks off, its stream reset, for it is not whole.
struct EndableAnswer {
    answer: Arc<HeldAnswer>,
    /// The task that ends the write; stopped once the answer is over.
    ender: tokio::task::AbortHandle,
    /// Whether the client has been told of the end.
    told: bool,
}

struct HeldAnswer {
    /// The answer in flight; taken when the gateway ends the write.
    in_flight: std::sync::Mutex<Option<InFlight>>,
    /// The poll waiting on the answer in flight, woken when it is taken.
    waker: futures_util::task::AtomicWaker,
    grpc: bool,
}

impl HeldAnswer {
    fn in_flight(&self) -> std::sync::MutexGuard<'_, Option<InFlight>> {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl EndableAnswer {
    fn new(
        in_flight: InFlight,
        end: WaitForCancellationFutureOwned,
        grpc: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let answer = Arc::new(HeldAnswer {
            in_flight: std::sync::Mutex::new(Some(in_flight)),
            waker: futures_util::task::AtomicWaker::new(),
            grpc,
        });
        let held = answer.clone();
        let ender = tokio::spawn(async move {
            end.await;
            let ended = held.in_flight().take();
            if ended.is_some() {
                metrics.writes_ended.fetch_add(1, Ordering::Relaxed);
            }
            // The upstream's stream or connection goes, then the write's count.
            drop(ended);
            held.waker.wake();
        })
        .abort_handle();
        Self {
            answer,
            ender,
            told: false,
        }
    }
}

impl Drop for EndableAnswer {
    fn drop(&mut self) {
        // Let go of the answer here, not when the aborted task is next run.
        let answer = self.answer.in_flight().take();
        drop(answer);
        self.ender.abort();
    }
}

impl hyper::body::Body for EndableAnswer {
    type Data = bytes::Bytes;
    type Error = crate::upstream::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let mut held = this.answer.in_flight();
        if let Some(in_flight) = held.as_mut() {
            this.answer.waker.register(cx.waker());
            let polled = std::pin::Pin::new(&mut *in_flight).poll_frame(cx);
            let over = match &polled {
                std::task::Poll::Ready(None | Some(Err(_))) => true,
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    frame.is_trailers() || in_flight.is_end_stream()
                }
                std::task::Poll::Pending => false,
            };
            if over {
                // Whole (or failed upstream): nothing for the ender to end.
                let done = held.take();
                drop(held);
                this.told = true;
                drop(done);
            }
            return polled;
        }
        drop(held);
        if std::mem::replace(&mut this.told, true) {
            return std::task::Poll::Ready(None);
        }
        if this.answer.grpc {
            let mut trailers = http::HeaderMap::new();
            trailers.insert(grpc::GRPC_STATUS, HeaderValue::from_static("14"));
            trailers.insert(grpc::GRPC_MESSAGE, grpc::encode_message(WRITE_ENDED));
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::trailers(trailers))));
        }
        std::task::Poll::Ready(Some(Err(WRITE_ENDED.into())))
    }

    fn is_end_stream(&self) -> bool {
        self.told
            || self
                .answer
                .in_flight()
                .as_ref()
                .is_some_and(InFlight::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.answer
            .in_flight()
            .as_ref()
            .map_or_else(hyper::body::SizeHint::default, InFlight::size_hint)
    }
}

/// Forged or stale hop markers, for the log.
pub(crate) static HOP_REJECTED: LogThrottle = LogThrottle::new();

/// Seconds a client is asked to wait before retrying a write to a frozen unit.
pub(crate) const WRITE_FREEZE_RETRY_S: u64 = 2;

/// Headers the gateway adds to a request at most: host, forwarding, trace context and the
/// seven `X-Unitgate-*` headers.
const ADDED_HEADERS: usize = 11;

pub(crate) struct Routed {
    pub(crate) action: Action,
    pub(crate) route: Option<usize>,
    pub(crate) unit: Option<usize>,
    pub(crate) region: Option<RegionIndex>,
    pub(crate) fallback: Option<RegionIndex>,
    pub(crate) slot: Option<u32>,
    pub(crate) key: Option<String>,
    /// Why the key found cannot be used, and where it was found.
    pub(crate) invalid_key: Option<(router_rules::KeyError, Option<String>)>,
    /// Whether it is a write (its method, or a method override).
    pub(crate) is_write: bool,
}

pub(crate) enum Target<'s> {
    Local(&'s PoolState),
    Region(RegionIndex),
}

pub(crate) fn limited(refusal: Refusal, scope: &str, name: &str) -> Reply {
    let mut reply = Reply::new(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": "flow control", "scope": scope, "name": name, "limit": refusal.kind(), "retry_after_s": refusal.retry_after_s()}),
    );
    reply.retry_after_s = Some(refusal.retry_after_s());
    reply
}

/// The answer when an exchange failed through the client's own doing — a broken, cut-off or
/// oversize body, or one still arriving when the upstream's time ran out — counted as the
/// client's and never against the upstream.
fn client_fault(metrics: &Metrics, body: &BodyState, failure: UpstreamFailure) -> Option<Reply> {
    let (event, status, error) = match body.fault() {
        Some(fault) => (
            fault.event(),
            match fault {
                BodyFault::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                BodyFault::Malformed | BodyFault::Aborted => StatusCode::BAD_REQUEST,
            },
            match fault {
                BodyFault::TooLarge => "request body too large",
                BodyFault::Malformed => "malformed request body",
                BodyFault::Aborted => "request body cut off by the client",
            },
        ),
        None if matches!(failure, UpstreamFailure::Timeout) && !body.done() => (
            ClientEvent::BodySlow,
            StatusCode::REQUEST_TIMEOUT,
            "request body too slow",
        ),
        None => return None,
    };
    metrics.client_event(event);
    let mut reply = Reply::new(status, json!({ "error": error }));
    // What is left of the body on the connection cannot be trusted as the next request.
    reply.close = true;
    Some(reply)
}

fn framing_refusal(why: &str) -> Reply {
    let mut reply = Reply::new(
        StatusCode::BAD_REQUEST,
        json!({"error": "ambiguous request framing", "detail": why}),
    );
    reply.close = true;
    reply
}

/// Headers for the next hop: hop-by-hop ones removed, `Host` the authority the request was
/// routed by (an absolute-form target's or HTTP/2's `:authority` replaces it),
/// `X-Forwarded-For`/`-Proto` and the trace context set. The client's `X-Forwarded-*`,
/// `Forwarded` and `X-Real-IP` are kept only from a `trusted` peer (a configured proxy, or
/// another gateway's hop).
fn forwarding_headers(
    parts: &mut Parts,
    seen: &RequestHeaders,
    upgrade: bool,
    conn: &Conn,
    trusted: bool,
    trace: &TraceParent,
) {
    if seen.hop_by_hop {
        strip_hop_by_hop(&mut parts.headers, upgrade);
    }
    // Room for what this function and `add_unit_headers` add, so the map grows once.
    parts.headers.reserve(ADDED_HEADERS);
    if let Some(host) = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, host);
    }
    let previous = (trusted && seen.forwarded_for)
        .then(|| parts.headers.get(&X_FORWARDED_FOR))
        .flatten();
    let forwarded_for = match previous.map(HeaderValue::as_bytes) {
        Some(previous) => {
            let mut value = Vec::with_capacity(previous.len() + 2 + conn.peer_ip.len());
            value.extend_from_slice(previous);
            value.extend_from_slice(b", ");
            value.extend_from_slice(conn.peer_ip.as_bytes());
            HeaderValue::from_bytes(&value).unwrap_or_else(|_| conn.peer_ip.clone())
        }
        None => conn.peer_ip.clone(),
    };
    parts.headers.insert(X_FORWARDED_FOR, forwarded_for);
    if !trusted && seen.forwarded_other {
        let vouching: Vec<HeaderName> = parts
            .headers
            .keys()
            .filter(|name| is_other_forwarding(name))
            .cloned()
            .collect();
        for name in vouching {
            parts.headers.remove(name);
        }
    }
    if !(trusted && seen.forwarded_proto) {
        parts.headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        );
    }
    parts.headers.insert(TRACEPARENT, trace.child());
}

fn add_unit_headers(
    headers: &mut HeaderMap,
    snapshot: &Snapshot,
    routed: &Routed,
    class: Class,
    stress: bool,
) {
    if let Some(unit) = routed.unit {
        headers.insert(X_UNITGATE_UNIT, snapshot.units[unit].header.clone());
    }
    if let Some(slot) = routed.slot {
        headers.insert(X_UNITGATE_SLOT, HeaderValue::from(slot));
    }
    headers.insert(X_UNITGATE_REGION, snapshot.here().header.clone());
    headers.insert(X_UNITGATE_CLASS, HeaderValue::from_static(class.as_str()));
    headers.insert(X_UNITGATE_TABLE_VERSION, snapshot.version_header.clone());
    if let Some(key) = &routed.key {
        headers.insert(X_UNITGATE_KEY, header_safe(key));
    }
    if stress {
        headers.insert(X_UNITGATE_STRESS, HeaderValue::from_static("1"));
    }
}

/// HTTP/2 may split `Cookie` into several fields; an HTTP/1 upstream (and the routing key's
/// cookie lookup) expects one, joined with `"; "` (RFC 9113 section 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

fn upstream_uri(path_and_query: Option<&http::uri::PathAndQuery>) -> Uri {
    // Origin form: the connection already names the endpoint.
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(
        path_and_query
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).unwrap_or_default()
}

/// The `RequestView` of a request's head.
struct PartsView<'a>(&'a Parts);

impl RequestView for PartsView<'_> {
    fn method(&self) -> &str {
        self.0.method.as_str()
    }

    fn host(&self) -> Option<&str> {
        self.0.uri.authority().map(|a| a.as_str()).or_else(|| {
            self.0
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
    }

    fn path(&self) -> &str {
        self.0.uri.path()
    }

    fn query(&self) -> Option<&str> {
        self.0.uri.query()
    }

    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> {
        // `name` is lowercase, as header names are. Walking a request's few headers costs less
        // than parsing and hashing `name` for a map lookup.
        self.0
            .headers
            .iter()
            .filter(move |(n, _)| n.as_str() == name)
            .filter_map(|(_, v)| v.to_str().ok())
    }

    fn method_overrides(&self) -> impl Iterator<Item = &[u8]> {
        // One walk of the headers for the three names.
        self.0
            .headers
            .iter()
            .filter(|(n, _)| METHOD_OVERRIDE_FIELDS.contains(&n.as_str()))
            .map(|(_, v)| v.as_bytes())
    }
}

pub(crate) fn finish(
    shared: &Shared,
    ctx: &Ctx,
    snapshot: Option<&Snapshot>,
    conn: &Conn,
    status: StatusCode,
) {
    let elapsed = ctx.start.elapsed();
    let served_in = ctx.forwarded_to.or(ctx.region);
    let hop = Hop::of(ctx.hops_in > 0, ctx.forwarded_to.is_some());
    shared.metrics.request(
        shared.worker,
        RequestLabels {
            route: snapshot
                .zip(ctx.route)
                .and_then(|(s, r)| s.routes.get(r))
                .map_or(NONE, |r| r.id),
            class: ctx.class.map_or(b'-', |c| c.as_str().as_bytes()[0]),
            unit: snapshot
                .zip(ctx.unit)
                .and_then(|(s, u)| s.units.get(u))
                .map_or(NONE, |u| u.id),
            region: snapshot
                .zip(served_in)
                .and_then(|(s, r)| s.regions.get(r))
                .map_or(NONE, |r| r.id),
            hop,
            status: status.as_u16(),
            stress: ctx.stress,
        },
        elapsed,
    );
    if !shared.config.access_log.enabled {
        return;
    }
    let key = ctx.key.as_deref().unwrap_or("");
    // Fields left `None` are left out of the line.
    let (key, key_hash) = match shared.key_log {
        KeyLog::AsIs => (Some(key), None),
        KeyLog::Hashed(_) => (None, Some(key)),
        KeyLog::Omitted => (None, None),
    };
    let name = |f: &dyn Fn(&Snapshot) -> Option<String>| snapshot.and_then(f).unwrap_or_default();
    tracing::info!(
        target: "unitgate::access",
        method = %ctx.method,
        path = %ctx.path,
        status = status.as_u16(),
        route = %name(&|s| ctx.route.map(|r| s.table.routes()[r].name.to_string())),
        class = ctx.class.map_or("-", |c| c.as_str()),
        key,
        key_hash,
        slot = ctx.slot.map_or(-1, i64::from),
        unit = %name(&|s| ctx.unit.map(|u| s.table.units()[u].name.to_string())),
        region = %name(&|s| ctx.region.map(|r| s.table.regions()[r].name.to_string())),
        forwarded_to = %name(&|s| ctx.forwarded_to.map(|r| s.table.regions()[r].name.to_string())),
        hops_in = ctx.hops_in,
        hop = hop.as_str(),
        upstream = ctx.upstream.as_deref().unwrap_or(""),
        version = ctx.version,
        duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        trace_id = ctx.trace.as_ref().map_or("", TraceParent::trace_id),
        stress = ctx.stress,
        client = %conn.peer,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holding one table: u1 (every slot) in hz, where this gateway is.
    fn one_unit_store() -> (Arc<TableStore>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(TableStore::new("hz", None, metrics.clone()));
        store
            .load_text(
                "version: 1\nregions:\n  - { name: hz, gateways: [\"127.0.0.1:1\"], pools: { app: [\"127.0.0.1:2\"] } }\nunits:\n  - { name: u1, center: true, slots: [[0, 9999]], region: hz }\nroutes:\n  - { name: app, match: { path_prefix: / }, service: app, class: C, key: [{ header: X-User-Id }], missing_key: reject }\n",
                false,
                "test",
            )
            .expect("v1");
        (store, metrics)
    }

    /// The empty answer of a write to u1 of `store`'s table, which the gateway may end; the
    /// snapshot that routed it. Spawns the answer's ender: call it on a runtime.
    fn write_answer(store: &TableStore, metrics: &Arc<Metrics>) -> (Arc<Snapshot>, EndableAnswer) {
        let snapshot = store.current().expect("v1");
        let write = store.start_write(&snapshot, 0).expect("counted");
        let end = write.ended();
        let in_flight = InFlight {
            body: UpstreamBody::Codec(empty()),
            _permits: (None, None, Some(write)),
        };
        let answer = EndableAnswer::new(in_flight, end, false, metrics.clone());
        (snapshot, answer)
    }

    /// A write's answer dropped (its end sent, or its stream reset) lets its write go then, as
    /// `InFlight` says: the count (and the permits) are not left to the ender task's abort.
    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_write_answer_lets_its_write_go_at_once() {
        let (store, metrics) = one_unit_store();
        let (_snapshot, answer) = write_answer(&store, &metrics);
        assert_eq!(store.writes_in_flight().1, 1);
        drop(answer);
        assert_eq!(
            store.writes_in_flight().1,
            0,
            "the answer is gone, its write still counted in flight"
        );
    }

    /// An answer that ended whole is not counted as a write the gateway ended when the end
    /// signal comes before hyper drops it.
    #[tokio::test(flavor = "current_thread")]
    async fn an_answer_ended_whole_is_not_counted_as_ended_by_the_gateway() {
        use http_body_util::BodyExt as _;
        let (store, metrics) = one_unit_store();
        let (snapshot, mut answer) = write_answer(&store, &metrics);
        assert!(answer.frame().await.is_none(), "the answer ends whole");
        snapshot.units[0].cancel_for_test();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(metrics.writes_ended.load(Ordering::Relaxed), 0);
        drop(answer);
    }

    #[test]
    fn a_key_segment_is_left_out_of_the_logged_path() {
        assert_eq!(without_segment("/users/4321/cart", 2), "/users/{key}/cart");
        // Segments count as the key sources count them: empty ones do not.
        assert_eq!(without_segment("//users//4321", 2), "//users//{key}");
        assert_eq!(without_segment("/users", 2), "/users");
    }

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "100.9.99.255",
            "255.255.255.255",
            "::1",
            "::ffff:1.2.3.4",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().expect("address");
            assert_eq!(ip_text(ip), ip.to_string().as_str());
        }
    }
}
