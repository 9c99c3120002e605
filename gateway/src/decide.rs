//! Phases 2 to 5 of the request path — load, resolve, admit, pick — shared by both front ends
//! (the gateway's own HTTP/1.1 codec and hyper's HTTP/2): they see a request only through
//! [`RequestView`] and [`Facts`], so what decides where a request goes is written once.

use http::StatusCode;
use router_rules::table::{RegionIndex, Route};
use router_rules::{Action, Class, RequestView};
use serde_json::json;

use crate::headers::TraceParent;
use crate::hop::{HopMarker, MAX_HOPS};
use crate::limits::{Permits, Refusal};
use crate::metrics::LimitScope;
use crate::proxy::{
    Ctx, HOP_REJECTED, KeyLog, Reply, Routed, Shared, Target, WRITE_FREEZE_RETRY_S, limited,
    without_segment,
};
use crate::store::Snapshot;

/// What the decision needs of a request's fields, found by the front end in its one pass.
#[derive(Default)]
pub struct Facts<'a> {
    /// The hop marker's value.
    pub hop: Option<&'a [u8]>,
    /// The incoming `traceparent`.
    pub traceparent: Option<&'a [u8]>,
    /// The stress-test marker is there.
    pub stress: bool,
    /// The declared body length.
    pub content_length: Option<u64>,
    /// The `grpc-timeout` value: the client's own deadline for the call.
    pub grpc_timeout: Option<&'a [u8]>,
}

/// Where a request goes and what it carries there.
pub(crate) struct Decided<'s> {
    /// The table in force that decided it.
    pub(crate) snapshot: &'s Snapshot,
    pub(crate) route: &'s Route,
    pub(crate) routed: Routed,
    pub(crate) target: Target<'s>,
    /// The verified marker of the gateway that forwarded it here.
    pub(crate) hop_in: Option<HopMarker>,
    pub(crate) trace: TraceParent,
    /// Held until the request ends, its answer all sent: flow control counts it in flight.
    pub(crate) permits: Permits,
}

impl Decided<'_> {
    /// The header fields its route reads the routing key from (`RouteState::key_headers`), for
    /// a chunked body (whose trailers may not carry them); `None` for any other, so that the
    /// snapshot's reference counts are not touched for every request.
    pub(crate) fn key_headers(&self, chunked: bool) -> Option<crate::store::KeyHeaders> {
        if !chunked {
            return None;
        }
        self.snapshot.routes[self.route.index].key_headers.clone()
    }

    /// Whether the request goes upstream over HTTP/2: the serving region's pool for the
    /// route's service says `protocol: h2`, whether the request goes to that pool or to that
    /// region's gateways.
    pub(crate) fn over_h2(&self) -> bool {
        let serving = match self.target {
            Target::Local(_) => self.snapshot.region,
            Target::Region(region) => region,
        };
        crate::upstream_h2::wanted(&self.snapshot.table, serving, self.route.service)
    }
}

/// Decide `view` by the table in `snapshot` (loaded once by the caller), noting in `ctx` what
/// was learnt; every refusal is the reply to send.
///
/// A write is counted in flight to its unit ([`crate::store::TableStore::start_write`]) before
/// it is admitted. When a table that moved or froze the unit was swapped in between the
/// caller's load and that count, the request is decided again by the table in force, which
/// `newer` then holds; nothing of the first decision was charged (rate-limit tokens, the
/// cross-region count).
pub(crate) fn decide<'s>(
    shared: &Shared,
    ctx: &mut Ctx,
    snapshot: Option<&'s Snapshot>,
    newer: &'s mut Option<std::sync::Arc<Snapshot>>,
    view: &impl RequestView,
    facts: &Facts<'_>,
) -> Result<Decided<'s>, Reply> {
    match decide_by(shared, ctx, snapshot, view, facts) {
        Ok(decided) => Ok(decided),
        Err(Undecided::Refused(reply)) => Err(reply),
        Err(Undecided::Moved(_)) => decide_again(shared, ctx, newer, view, facts),
    }
}

/// [`decide`] again, by the table in force (held in `newer`), for a write whose unit a table
/// swapped in since the first decision moved or froze.
#[cold]
fn decide_again<'s>(
    shared: &Shared,
    ctx: &mut Ctx,
    newer: &'s mut Option<std::sync::Arc<Snapshot>>,
    view: &impl RequestView,
    facts: &Facts<'_>,
) -> Result<Decided<'s>, Reply> {
    *newer = shared.store.current();
    let newer: &'s Option<std::sync::Arc<Snapshot>> = newer;
    match decide_by(shared, ctx, newer.as_deref(), view, facts) {
        Ok(decided) => Ok(decided),
        Err(Undecided::Refused(reply)) => Err(reply),
        Err(Undecided::Moved(unit)) => {
            let name = newer
                .as_deref()
                .map(|s| s.table.units()[unit].name.to_string());
            // Swapped again within these microseconds: the client sends it again.
            let mut reply = Reply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "the unit's routing changed while this write was routed", "unit": name, "retry_after_s": WRITE_FREEZE_RETRY_S, "table_version": ctx.version}),
            );
            reply.retry_after_s = Some(WRITE_FREEZE_RETRY_S);
            Err(reply)
        }
    }
}

/// Why [`decide_by`] did not decide a request.
enum Undecided {
    /// The reply to send.
    Refused(Reply),
    /// A write to the unit at this position, which a table swapped in since moved or froze.
    Moved(usize),
}

impl From<Reply> for Undecided {
    fn from(reply: Reply) -> Self {
        Undecided::Refused(reply)
    }
}

/// [`decide`] by one snapshot. A write is counted once the route's refusals are passed and
/// before anything is charged.
fn decide_by<'s>(
    shared: &Shared,
    ctx: &mut Ctx,
    snapshot: Option<&'s Snapshot>,
    view: &impl RequestView,
    facts: &Facts<'_>,
) -> Result<Decided<'s>, Undecided> {
    let limits = shared.config.limits;
    if let Some(length) = facts.content_length
        && length > limits.max_body_bytes
    {
        let mut reply = Reply::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": "request body too large", "limit_bytes": limits.max_body_bytes}),
        );
        reply.close = true;
        return Err(reply.into());
    }

    // Phase 2: the table in force.
    let Some(snapshot) = snapshot else {
        return Err(Reply::new(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "no routing table applied yet"}),
        )
        .into());
    };
    ctx.version = snapshot.table.version();
    // Decided anew by a newer table (`decide`): nothing of the first decision stays.
    ctx.forwarded_to = None;
    let trace = TraceParent::continue_or_start(facts.traceparent);
    ctx.trace = Some(trace);
    let hop_in = facts
        .hop
        .and_then(|marker| verify_hop(shared, marker, view.method(), view.path()));
    ctx.hops_in = hop_in.as_ref().map_or(0, |m| m.hops);
    ctx.stress = facts.stress;
    ctx.client_deadline = facts
        .grpc_timeout
        .and_then(crate::grpc::timeout)
        .and_then(|timeout| ctx.start.checked_add(timeout));

    // Phase 3: resolve.
    let routed = {
        let decision = snapshot.table.resolve(view, snapshot.region);
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
            is_write: decision.is_write,
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
                json!({"error": "no route", "method": view.method(), "path": view.path(), "table_version": ctx.version}),
            ).into());
        }
        (Action::MissingKey, Some(route)) => {
            return Err(Reply::new(
                StatusCode::BAD_REQUEST,
                json!({"error": "missing routing key", "route": &*route.name, "tried": route.key_sources.iter().map(ToString::to_string).collect::<Vec<_>>(), "table_version": ctx.version}),
            ).into());
        }
        (Action::InvalidKey, Some(_)) => {
            let (error, source) = routed
                .invalid_key
                .clone()
                .unwrap_or((router_rules::KeyError::Undecodable, None));
            return Err(Reply::new(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid routing key", "reason": error.as_str(), "detail": error.message(), "source": source, "table_version": ctx.version}),
            ).into());
        }
        (Action::WriteFrozen, Some(_)) => {
            let unit = routed.unit.map(|u| table.units()[u].name.to_string());
            let mut reply = Reply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "unit is write-frozen", "unit": unit, "retry_after_s": WRITE_FREEZE_RETRY_S, "table_version": ctx.version}),
            );
            reply.retry_after_s = Some(WRITE_FREEZE_RETRY_S);
            return Err(reply.into());
        }
        (Action::Forward, Some(route)) => route,
    };
    // Counted in flight before it is charged: a write whose unit a newer table moved or froze
    // is decided again by that table (`decide`), and charged once.
    let write = match routed.unit.filter(|_| routed.is_write) {
        None => None,
        Some(unit) => match shared.store.start_write(snapshot, unit) {
            Some(write) => Some(write),
            None => return Err(Undecided::Moved(unit)),
        },
    };
    let route_permit = match &snapshot.routes[route.index].limiter {
        Some(limiter) => Some(limiter.admit().map_err(|refusal| {
            shared.metrics.limited(
                LimitScope::Route,
                snapshot.routes[route.index].id,
                matches!(refusal, Refusal::Rate(_)),
            );
            limited(refusal, "route", &route.name)
        })?),
        None => None,
    };
    let unit_permit = match routed
        .unit
        .and_then(|u| snapshot.units[u].limiter.as_ref().map(|l| (u, l)))
    {
        Some((unit, limiter)) => Some(limiter.admit().map_err(|refusal| {
            shared.metrics.limited(
                LimitScope::Unit,
                snapshot.units[unit].id,
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
    let target = pick(snapshot, route, &routed, serving)?;
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
        )
        .into());
    }
    if let Target::Region(region) = target {
        ctx.forwarded_to = Some(region);
        shared.metrics.cross_region(snapshot.regions[region].id);
    }
    Ok(Decided {
        snapshot,
        route,
        routed,
        target,
        hop_in,
        trace,
        permits: (route_permit, unit_permit, write),
    })
}

/// This region's pool, or the region to forward to (the unit's, or a P-class read's fallback
/// when the local pool has no healthy endpoint).
fn pick<'s>(
    snapshot: &'s Snapshot,
    route: &Route,
    routed: &Routed,
    serving: RegionIndex,
) -> Result<Target<'s>, Reply> {
    if serving != snapshot.region {
        return Ok(Target::Region(serving));
    }
    match (
        snapshot.here().pools[route.service].as_ref(),
        routed.fallback,
    ) {
        (Some(pool), Some(fallback)) if !pool.any_healthy() && route.class == Class::P => {
            Ok(Target::Region(fallback))
        }
        (Some(pool), _) => Ok(Target::Local(pool)),
        (None, _) => Err(Reply::new(
            StatusCode::BAD_GATEWAY,
            json!({"error": "no pool for service in this region", "service": &*snapshot.table.services()[route.service]}),
        )),
    }
}

/// The marker in `value` if it is authentic and fresh; a forged or stale one is counted and
/// ignored.
fn verify_hop(shared: &Shared, value: &[u8], method: &str, path: &str) -> Option<HopMarker> {
    match shared.hop.verify(value, method, path) {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use router_rules::SimpleRequest;

    use super::*;
    use crate::metrics::Metrics;
    use crate::store::TableStore;

    /// u1 (every slot) in `region`; the one route rate-limited to one request at a time.
    fn table(version: u64, region: &str) -> String {
        format!(
            "version: {version}\nregions:\n  - {{ name: hz, gateways: [\"127.0.0.1:1\"], pools: {{ app: [\"127.0.0.1:2\"] }} }}\n  - {{ name: sh, gateways: [\"127.0.0.1:3\"], pools: {{ app: [\"127.0.0.1:4\"] }} }}\nunits:\n  - {{ name: u1, center: true, slots: [[0, 9999]], region: {region} }}\nroutes:\n  - {{ name: app, match: {{ path_prefix: / }}, service: app, class: C, key: [{{ header: X-User-Id }}], missing_key: reject, limits: {{ rate: 1, burst: 1 }} }}\n"
        )
    }

    fn shared(store: Arc<TableStore>, metrics: Arc<Metrics>) -> Shared {
        let config = crate::config::GatewayConfig::parse(
            "region: hz\nlisten: { http: [\"127.0.0.1:0\"] }\ntable: { file: table.yaml }\nhop_secret: decide-test-secret-0123456789abcdef\n",
            "test",
        )
        .expect("config");
        let hop_secret = config.hop_secret().expect("secret");
        Shared {
            worker: 0,
            timer: crate::coarse_timer::CoarseTimer::new(),
            upstream: crate::upstream::Upstream::with_connectors(
                &config.timeouts,
                store.connectors(),
            ),
            upstream_h2: crate::upstream_h2::H2Upstream::new(&config.timeouts),
            codec_upstream: Arc::new(crate::h1::client::Pool::new(
                config.timeouts.connect(),
                store.connectors(),
            )),
            hop: crate::hop::HopKey::new(&hop_secret),
            key_log: KeyLog::new(config.access_log.routing_key, &hop_secret),
            stress_header: http::HeaderName::from_static("x-unitgate-stress"),
            draining: false.into(),
            body_budget: crate::limits::BodyBudget::new(config.limits.max_buffered_body_bytes),
            store,
            metrics,
            config,
        }
    }

    /// A write resolved by a table replaced, before it was counted, by one that moved its unit is
    /// decided again by the newer table, and charged once: one rate-limit token (the route allows
    /// one), one cross-region forward.
    #[tokio::test]
    async fn a_write_decided_again_by_a_newer_table_is_charged_once() {
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(TableStore::new("hz", None, metrics.clone()));
        store.load_text(&table(1, "hz"), false, "test").expect("v1");
        let loaded = store.current().expect("v1");
        store.load_text(&table(2, "sh"), false, "test").expect("v2");
        let shared = shared(store.clone(), metrics.clone());
        let write = SimpleRequest::new("POST", "/orders").with_header("x-user-id", "42");

        let mut ctx = Ctx::new(&shared, http::Method::POST, "/orders");
        let mut newer = None;
        let decided = decide(
            &shared,
            &mut ctx,
            Some(&loaded),
            &mut newer,
            &write,
            &Facts::default(),
        )
        .unwrap_or_else(|reply| panic!("refused: {}", reply.status));
        assert_eq!(decided.snapshot.table.version(), 2);
        assert!(
            matches!(decided.target, Target::Region(_)),
            "u1 is in sh now"
        );
        drop(decided);
        let text = metrics.render(&[]);
        assert!(
            text.contains("unitgate_cross_region_forwards_total{region=\"sh\"} 1\n"),
            "{text}"
        );

        // The route's one token was taken by that decision, and only one: the next is refused.
        let mut ctx = Ctx::new(&shared, http::Method::POST, "/orders");
        let current = store.current();
        let refused = decide(
            &shared,
            &mut ctx,
            current.as_deref(),
            &mut None,
            &write,
            &Facts::default(),
        )
        .err()
        .expect("over the rate");
        assert_eq!(refused.status, http::StatusCode::TOO_MANY_REQUESTS);
    }
}
