//! The request path, in phases (as pingora's `ProxyHttp` lays them out):
//!
//! 1. **limits** — refuse unsafe framing and oversize requests before anything else;
//! 2. **load** — take the table in force once (one atomic load); it decides everything below;
//! 3. **resolve** — `CompiledTable::resolve`, the same code as `unitctl route`;
//! 4. **admit** — no route (404), missing key (400), write-frozen (503), flow control (429),
//!    forwarding loops (508);
//! 5. **pick** — this region's pool (health-aware round robin or key affinity), or another
//!    region's gateways (error correction, with an authenticated hop marker);
//! 6. **forward** — with timeouts, retrying idempotent requests on connect failure within the
//!    same region only;
//! 7. **respond** and **log** — one access-log line and the metrics, per request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use router_rules::table::RegionIndex;
use router_rules::{Action, Balance, Class, RequestView};
use serde_json::json;

use crate::client_body::{BodyFault, BodyState, ClientBody};
use crate::coarse_timer::CoarseTimer;
use crate::config::{GatewayConfig, RoutingKeyLog};
use crate::framing::Verdicts;
use crate::headers::{
    RequestHeaders, TRACEPARENT, TraceParent, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_UNITGATE_CLASS,
    X_UNITGATE_HOP, X_UNITGATE_KEY, X_UNITGATE_REGION, X_UNITGATE_SLOT, X_UNITGATE_STRESS,
    X_UNITGATE_TABLE_VERSION, X_UNITGATE_UNIT, check_request_line, header_safe, strip_hop_by_hop,
    strip_internal_headers,
};
use crate::hop::{HopKey, HopMarker, KeyHasher, MAX_HOPS};
use crate::limits::Refusal;
use crate::metrics::{ClientEvent, Hop, LimitScope, Metrics, NONE, RequestLabels, UpstreamFailure};
use crate::store::{PoolState, Snapshot, TableStore};
use crate::upstream::{Body, BoxError, Upstream, empty};
use control_api::throttle::LogThrottle;

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
fn without_segment(path: &str, n: u32) -> String {
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
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            tls,
            watch,
            trusted_proxy: config
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&peer.ip())),
        }
    }
}

/// What a request learnt on its way, for the response, the log and the metrics.
struct Ctx {
    start: Instant,
    method: Method,
    path: String,
    trace: Option<TraceParent>,
    version: u64,
    route: Option<usize>,
    class: Option<Class>,
    unit: Option<usize>,
    region: Option<RegionIndex>,
    slot: Option<u32>,
    /// The routing key as the access log shows it: as found, or hashed.
    key: Option<String>,
    hops_in: u8,
    forwarded_to: Option<RegionIndex>,
    upstream: Option<Arc<str>>,
    stress: bool,
}

/// A response the gateway makes itself.
struct Reply {
    status: StatusCode,
    body: serde_json::Value,
    retry_after_s: Option<u64>,
    close: bool,
}

impl Reply {
    fn new(status: StatusCode, body: serde_json::Value) -> Self {
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
    let mut ctx = Ctx {
        start: Instant::now(),
        method: request.method().clone(),
        // Only the access log needs its own copy of the path.
        path: if shared.config.access_log.enabled {
            request.uri().path().to_owned()
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
    };
    let http1 = request.version() < Version::HTTP_2;
    // The table in force, loaded once: it decides this request from start to end, and the
    // metrics and the log line name what it decided.
    let snapshot = shared.store.current();
    let decided = proxy(
        &shared,
        &conn,
        &mut ctx,
        snapshot.as_deref(),
        request,
        smuggling,
    );
    let mut response = match decided.await {
        Ok(response) => response,
        Err(reply) => reply.into_response(),
    };
    if http1 && shared.draining.load(std::sync::atomic::Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    finish(&shared, &ctx, snapshot.as_deref(), &conn, response.status());
    Ok(response)
}

async fn proxy(
    shared: &Shared,
    conn: &Conn,
    ctx: &mut Ctx,
    snapshot: Option<&Snapshot>,
    mut request: Request<Incoming>,
    smuggling: bool,
) -> Result<Response<Body>, Reply> {
    // Phase 1: limits and framing.
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
    if let Some(length) = seen.content_length()
        && length > limits.max_body_bytes
    {
        return Err(Reply::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": "request body too large", "limit_bytes": limits.max_body_bytes}),
        ));
    }

    // Phase 2: the table in force (loaded once, by `handle`).
    let Some(snapshot) = snapshot else {
        return Err(Reply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "no routing table applied yet"}),
        ));
    };
    ctx.version = snapshot.table.version();

    let trace = TraceParent::continue_or_start(seen.traceparent.as_ref());
    ctx.trace = Some(trace);
    let hop_in = seen
        .hop
        .as_ref()
        .and_then(|marker| verify_hop(shared, marker, &request));
    ctx.hops_in = hop_in.as_ref().map_or(0, |m| m.hops);
    ctx.stress = seen.stress;
    if seen.internal {
        strip_internal_headers(request.headers_mut());
    }
    let upgrade = seen.is_upgrade();
    let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));

    // Phase 3: resolve.
    let (mut parts, body) = request.into_parts();
    let routed = {
        let view = PartsView(&parts);
        let decision = snapshot.table.resolve(&view, snapshot.region);
        if let Some(router_rules::KeySource::PathSegment(n)) = decision.key_source
            && shared.config.access_log.enabled
            && !matches!(shared.key_log, KeyLog::AsIs)
        {
            // The path holds the routing key: the log shows where, not what.
            ctx.path = without_segment(&ctx.path, *n);
        }
        Routed {
            action: decision.action,
            route: decision.route.map(|r| r.index),
            unit: decision.unit.map(|u| u.index),
            region: decision.region.map(|r| r.index),
            fallback: decision.fallback_region.map(|r| r.index),
            slot: decision.slot,
            key: decision.key.as_ref().map(|k| k.as_str().to_owned()),
            invalid_key: decision
                .key_error
                .map(|e| (e, decision.key_source.map(ToString::to_string))),
        }
    };
    let table = &snapshot.table;
    let route = routed.route.map(|r| &table.routes()[r]);
    ctx.route = routed.route;
    ctx.class = route.map(|r| r.class);
    ctx.unit = routed.unit;
    ctx.region = routed.region;
    ctx.slot = routed.slot;
    if shared.config.access_log.enabled {
        // Only the access log needs its own copy of the key, or of its hash.
        ctx.key = match &shared.key_log {
            KeyLog::AsIs => routed.key.clone(),
            KeyLog::Hashed(hasher) => routed.key.as_deref().map(|k| hasher.hash(k)),
            KeyLog::Omitted => None,
        };
    }

    // Phase 4: admit.
    let route = match (routed.action, route) {
        (Action::NoRoute, _) | (_, None) => {
            return Err(Reply::new(
                StatusCode::NOT_FOUND,
                json!({"error": "no route", "method": parts.method.as_str(), "path": parts.uri.path(), "table_version": ctx.version}),
            ));
        }
        (Action::MissingKey, Some(route)) => {
            return Err(Reply::new(
                StatusCode::BAD_REQUEST,
                json!({"error": "missing routing key", "route": &*route.name, "tried": route.key_sources.iter().map(ToString::to_string).collect::<Vec<_>>(), "table_version": ctx.version}),
            ));
        }
        (Action::InvalidKey, Some(_)) => {
            let (error, source) = routed
                .invalid_key
                .clone()
                .unwrap_or((router_rules::KeyError::Undecodable, None));
            return Err(Reply::new(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid routing key", "reason": error.as_str(), "detail": error.message(), "source": source, "table_version": ctx.version}),
            ));
        }
        (Action::WriteFrozen, Some(_)) => {
            let unit = routed.unit.map(|u| table.units()[u].name.to_string());
            let mut reply = Reply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "unit is write-frozen", "unit": unit, "retry_after_s": WRITE_FREEZE_RETRY_S, "table_version": ctx.version}),
            );
            reply.retry_after_s = Some(WRITE_FREEZE_RETRY_S);
            return Err(reply);
        }
        (Action::Forward, Some(route)) => route,
    };
    let _route_permit = match &snapshot.route_limits[route.index] {
        Some(limiter) => Some(limiter.admit().map_err(|refusal| {
            shared.metrics.limited(
                LimitScope::Route,
                snapshot.route_ids[route.index],
                matches!(refusal, Refusal::Rate(_)),
            );
            limited(refusal, "route", &route.name)
        })?),
        None => None,
    };
    let _unit_permit = match routed
        .unit
        .and_then(|u| snapshot.unit_limits[u].as_ref().map(|l| (u, l)))
    {
        Some((unit, limiter)) => Some(limiter.admit().map_err(|refusal| {
            shared.metrics.limited(
                LimitScope::Unit,
                snapshot.unit_ids[unit],
                matches!(refusal, Refusal::Rate(_)),
            );
            limited(refusal, "unit", &table.units()[unit].name)
        })?),
        None => None,
    };

    // Phase 5: pick where it goes.
    let mut serving = routed.region.unwrap_or(snapshot.region);
    // A gateway with a newer table sent it here: during a flip this gateway may not have that
    // version yet, and forwarding on by its older table would bounce the request between
    // regions. The newer table's choice stands.
    if serving != snapshot.region && hop_in.as_ref().is_some_and(|m| m.version > ctx.version) {
        serving = snapshot.region;
        ctx.region = Some(serving);
    }
    let local_pool = snapshot.pools[snapshot.region][route.service].as_ref();
    let target = if serving != snapshot.region {
        Target::Region(serving)
    } else {
        match (local_pool, routed.fallback) {
            (Some(pool), Some(fallback)) if !pool.any_healthy() && route.class == Class::P => {
                Target::Region(fallback)
            }
            (Some(pool), _) => Target::Local(pool),
            (None, _) => {
                return Err(Reply::new(
                    StatusCode::BAD_GATEWAY,
                    json!({"error": "no pool for service in this region", "service": &*table.services()[route.service]}),
                ));
            }
        }
    };
    if let Target::Region(region) = target
        && ctx.hops_in >= MAX_HOPS
    {
        return Err(Reply::new(
            StatusCode::LOOP_DETECTED,
            json!({
                "error": "forwarding loop: gateways disagree on where this request belongs",
                "origin_region": hop_in.as_ref().map(|m| m.origin.clone()),
                "incoming_table_version": hop_in.as_ref().map(|m| m.version),
                "local_table_version": ctx.version,
                "local_region": &*table.regions()[snapshot.region].name,
                "would_forward_to": &*table.regions()[region].name,
                "hops": ctx.hops_in,
            }),
        ));
    }

    // Phase 6: forward.
    let trusted = conn.trusted_proxy || hop_in.is_some();
    forwarding_headers(&mut parts, &seen, upgrade, conn, trusted, &trace);
    let (pool, affinity_key) = match target {
        Target::Local(pool) => {
            add_unit_headers(
                &mut parts.headers,
                snapshot,
                &routed,
                route.class,
                ctx.stress,
            );
            let key = (route.balance == Balance::KeyAffinity)
                .then_some(routed.key.as_deref())
                .flatten();
            (pool, key)
        }
        Target::Region(region) => {
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
            ctx.forwarded_to = Some(region);
            shared.metrics.cross_region(snapshot.region_ids[region]);
            (&snapshot.gateways[region], None)
        }
    };
    // A connect failure hands the request back untouched, so an idempotent one can go to
    // another endpoint as it is.
    let retryable = is_idempotent(&parts.method);
    let table_pool = match target {
        Target::Local(_) => table.regions()[snapshot.region].pool(route.service),
        Target::Region(_) => None,
    };
    let timeouts = shared.config.timeouts;
    let total_deadline = ctx.start + timeouts.total();
    parts.uri = upstream_uri(parts.uri.path_and_query());
    parts.version = Version::HTTP_11;
    let (client_body, body_state) = ClientBody::new(body, limits.max_body_bytes);
    let mut request = Some(Request::from_parts(parts, client_body.boxed()));
    let exchange = async {
        let attempts = if retryable {
            pool.endpoints.len().clamp(1, MAX_ATTEMPTS)
        } else {
            1
        };
        let mut tried = [usize::MAX; MAX_ATTEMPTS];
        for attempt in 0..attempts {
            let index = match (affinity_key, table_pool) {
                (Some(key), Some(table_pool)) => {
                    pool.first_healthy(table_pool.affinity_indices(key), &tried[..attempt])
                }
                _ => pool.round_robin(&tried[..attempt]),
            };
            let (Some(index), Some(upstream_request)) = (index, request.take()) else {
                break;
            };
            tried[attempt] = index;
            let endpoint = &pool.endpoints[index];
            if shared.config.access_log.enabled {
                ctx.upstream = Some(endpoint.address.clone());
            }
            // One deadline per attempt: its read deadline, or the request's total one if
            // sooner. The first attempt starts as the request did (no clock read).
            let attempt_start = if attempt == 0 {
                ctx.start
            } else {
                Instant::now()
            };
            let deadline = (attempt_start + timeouts.read()).min(total_deadline);
            let result = shared
                .timer
                .timeout_at(
                    deadline,
                    shared.upstream.send(&endpoint.authority, upstream_request),
                )
                .await;
            let failure = match result {
                Ok(Ok(response)) => {
                    endpoint.health.success();
                    return Ok(response);
                }
                Ok(Err(error)) if error.is_connect() => {
                    request = error.into_unsent();
                    UpstreamFailure::Connect
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, upstream = %endpoint.address, "upstream exchange failed");
                    UpstreamFailure::Other
                }
                Err(_) => UpstreamFailure::Timeout,
            };
            if let Some(reply) = client_fault(&shared.metrics, &body_state, failure) {
                return Err(reply);
            }
            shared.metrics.upstream_error(endpoint.id, failure);
            let health = &shared.config.health_check;
            endpoint.health.failure(
                health.eject_after_failures,
                Duration::from_millis(health.eject_for_ms),
            );
            if !matches!(failure, UpstreamFailure::Connect) || attempt + 1 == attempts {
                return Err(match failure {
                    UpstreamFailure::Timeout => Reply::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        json!({"error": "upstream timed out", "upstream": &*endpoint.address}),
                    ),
                    _ => Reply::new(
                        StatusCode::BAD_GATEWAY,
                        json!({"error": "upstream unreachable", "upstream": &*endpoint.address}),
                    ),
                });
            }
        }
        Err(Reply::new(
            StatusCode::BAD_GATEWAY,
            json!({"error": "no endpoint to forward to", "tried": tried.iter().filter(|i| **i != usize::MAX).count()}),
        ))
    };
    let mut response = exchange.await?;

    // Phase 7: respond.
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(on_client_upgrade) = on_client_upgrade
    {
        let on_upstream_upgrade = hyper::upgrade::on(&mut response);
        // From here on the client's bytes are tunnel data, not requests.
        conn.watch.tunnel_established();
        tokio::spawn(async move {
            if let (Ok(client), Ok(upstream)) = (on_client_upgrade.await, on_upstream_upgrade.await)
            {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, empty()));
    }
    strip_hop_by_hop(response.headers_mut(), false);
    Ok(response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
}

/// Forged or stale hop markers, for the log.
static HOP_REJECTED: LogThrottle = LogThrottle::new();

/// Seconds a client is asked to wait before retrying a write to a frozen unit.
const WRITE_FREEZE_RETRY_S: u64 = 2;

/// Headers the gateway adds to a request at most: host, forwarding, trace context and the
/// seven `X-Unitgate-*` headers.
const ADDED_HEADERS: usize = 11;

/// Endpoints an idempotent request is tried on when connections to them fail.
const MAX_ATTEMPTS: usize = 3;

struct Routed {
    action: Action,
    route: Option<usize>,
    unit: Option<usize>,
    region: Option<RegionIndex>,
    fallback: Option<RegionIndex>,
    slot: Option<u32>,
    key: Option<String>,
    /// Why the key found cannot be used, and where it was found.
    invalid_key: Option<(router_rules::KeyError, Option<String>)>,
}

enum Target<'s> {
    Local(&'s PoolState),
    Region(RegionIndex),
}

fn limited(refusal: Refusal, scope: &str, name: &str) -> Reply {
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

fn verify_hop(
    shared: &Shared,
    marker: &HeaderValue,
    request: &Request<Incoming>,
) -> Option<HopMarker> {
    match shared
        .hop
        .verify(marker, request.method().as_str(), request.uri().path())
    {
        Ok(marker) => Some(marker),
        Err(error) => {
            shared
                .metrics
                .hop_rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Any client can send a forged marker with every request: count each, log a line
            // a second at most.
            if let Some(count) = HOP_REJECTED.occurred() {
                tracing::warn!(%error, count, "hop marker ignored (count: since the last such line)");
            }
            None
        }
    }
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
/// `X-Forwarded-For`/`-Proto` and the trace context set. The client's `X-Forwarded-*` are
/// kept only from a `trusted` peer (a configured proxy, or another gateway's hop).
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
        headers.insert(X_UNITGATE_UNIT, snapshot.unit_headers[unit].clone());
    }
    if let Some(slot) = routed.slot {
        headers.insert(X_UNITGATE_SLOT, HeaderValue::from(slot));
    }
    headers.insert(
        X_UNITGATE_REGION,
        snapshot.region_headers[snapshot.region].clone(),
    );
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

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
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
}

fn finish(
    shared: &Shared,
    ctx: &Ctx,
    snapshot: Option<&Snapshot>,
    conn: &Conn,
    status: StatusCode,
) {
    let elapsed = ctx.start.elapsed();
    let id = |ids: Option<&Vec<u32>>, i: Option<usize>| match (ids, i) {
        (Some(ids), Some(i)) => ids.get(i).copied().unwrap_or(NONE),
        _ => NONE,
    };
    let served_in = ctx.forwarded_to.or(ctx.region);
    let hop = Hop::of(ctx.hops_in > 0, ctx.forwarded_to.is_some());
    shared.metrics.request(
        shared.worker,
        RequestLabels {
            route: id(snapshot.map(|s| &s.route_ids), ctx.route),
            class: ctx.class.map_or(b'-', |c| c.as_str().as_bytes()[0]),
            unit: id(snapshot.map(|s| &s.unit_ids), ctx.unit),
            region: id(snapshot.map(|s| &s.region_ids), served_in),
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

    #[test]
    fn a_key_segment_is_left_out_of_the_logged_path() {
        assert_eq!(without_segment("/users/4321/cart", 2), "/users/{key}/cart");
        // Segments count as the key sources count them: empty ones do not.
        assert_eq!(without_segment("//users//4321", 2), "//users//{key}");
        assert_eq!(without_segment("/users", 2), "/users");
    }
}
