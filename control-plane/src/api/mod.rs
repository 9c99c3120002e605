//! The HTTP API: the endpoint table ([`endpoints::ENDPOINTS`]) that routing, authorisation,
//! the OpenAPI document and the tests all read; routing with the token check and the audit
//! of every mutating call, whether it succeeded or not; and one thin handler per endpoint,
//! which turns HTTP into a call of a domain module (table admission, flips, units) and its
//! answer or refusal into JSON.
//!
//! Every error is a JSON [`control_api::ApiError`] naming what is wrong.

pub mod endpoints;
mod flips;
mod gateways;
mod reply;
mod status;
mod table;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use control_api::{AuditEntry, AuditOutcome, now_ms};
use http::{HeaderValue, Method, Request, StatusCode, header};
use hyper::body::Incoming;

use self::endpoints::match_path;
pub use self::endpoints::{ENDPOINTS, Endpoint, Op};
use self::reply::{Handled, Refusal, Reply, error, reply_message};
use crate::ControlPlane;
use crate::auth::{AuthFailure, Need, Principal};
use crate::store::FlipSignal;

/// Calls without a valid token, for the log.
static UNAUTHENTICATED: control_api::throttle::LogThrottle =
    control_api::throttle::LogThrottle::new();

/// Serve one request.
pub async fn handle(cp: Arc<ControlPlane>, request: Request<Incoming>) -> Reply {
    let reply = route(&cp, request).await;
    cp.metrics.response(reply.status().as_u16());
    reply
}

async fn route(cp: &Arc<ControlPlane>, request: Request<Incoming>) -> Reply {
    if let Some(reply) = crate::console::serve(request.method(), request.uri().path()) {
        return reply;
    }
    let path = request.uri().path().to_owned();
    let matching: Vec<(&Endpoint, Vec<&str>)> = ENDPOINTS
        .iter()
        .filter_map(|e| match_path(e.path, &path).map(|p| (e, p)))
        .collect();
    let Some((endpoint, params)) = matching
        .iter()
        .find(|(e, _)| e.method == request.method())
        .or_else(|| {
            // HEAD is GET without the body.
            (request.method() == Method::HEAD)
                .then(|| matching.iter().find(|(e, _)| e.method == Method::GET))
                .flatten()
        })
    else {
        if matching.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no endpoint {path} (the API document is at /v1/openapi.json)"),
            );
        }
        let allow: Vec<&str> = matching.iter().map(|(e, _)| e.method.as_str()).collect();
        let mut reply = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{} is not allowed on {path}; allowed: {}",
                request.method(),
                allow.join(", ")
            ),
        );
        if let Ok(value) = HeaderValue::from_str(&allow.join(", ")) {
            reply.headers_mut().insert(header::ALLOW, value);
        }
        return reply;
    };
    let params: Vec<String> = params.iter().map(|p| (*p).to_owned()).collect();
    let mutating = endpoint.method != Method::GET;
    let principal = if endpoint.need == Need::Nothing {
        None
    } else {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        match cp.tokens.authenticate(authorization) {
            Ok(principal) if principal.role.allows(endpoint.need) => Some(principal.clone()),
            Ok(principal) => {
                let reply = error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "{} {}: token {:?} has role {}; this needs {}",
                        endpoint.method,
                        endpoint.path,
                        principal.name,
                        principal.role.as_str(),
                        endpoint.need.roles()
                    ),
                );
                if mutating {
                    audit_call(cp, &principal.name, endpoint, &params, &reply).await;
                }
                return reply;
            }
            Err(failure) => {
                let message = match failure {
                    AuthFailure::Missing => "no bearer token: send Authorization: Bearer <token>",
                    AuthFailure::Unknown => "the bearer token is not valid",
                };
                let mut reply = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
                reply.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"unitgate-control\""),
                );
                // Anyone can send these, as fast as they like: an fsynced audit line each
                // would let them fill the disk and hold the audit log's lock. Counted, and
                // logged once a second with a count; refusals of known tokens are audited.
                cp.metrics.unauthenticated.fetch_add(1, Ordering::Relaxed);
                if let Some(count) = UNAUTHENTICATED.occurred() {
                    tracing::warn!(
                        method = %endpoint.method,
                        path = endpoint.path,
                        count,
                        "calls without a valid token refused (count: since the last such line)"
                    );
                }
                return reply;
            }
        }
    };
    let actor = principal
        .as_ref()
        .map_or("-", |p| p.name.as_str())
        .to_owned();
    let op = endpoint.op;
    let result = dispatch(cp, op, principal.as_ref(), &params, request).await;
    let reply = match result {
        Ok(reply) => reply,
        Err(Refusal(reply)) => *reply,
    };
    // Table writes and flip steps are audited with the change itself (atomically with it);
    // every other mutating call, and every refusal, is audited here.
    let audited_inside = matches!(
        op,
        Op::PutTable
            | Op::StartFlip
            | Op::StartFlips
            | Op::Evacuate
            | Op::Restore
            | Op::ResolveUnit
    ) && reply.status().is_success();
    // A gateway token used outside its binding, or naming a version never stored, is
    // audited even on the read-only watch.
    let gateway_refused = matches!(op, Op::Watch | Op::Report)
        && matches!(
            reply.status(),
            StatusCode::FORBIDDEN | StatusCode::UNPROCESSABLE_ENTITY
        );
    if gateway_refused {
        cp.metrics
            .gateway_reports_refused
            .fetch_add(1, Ordering::Relaxed);
    }
    // A plan and an explanation change nothing: they are not audited.
    let changes = mutating && !matches!(op, Op::Plan | Op::Explain);
    if (changes && !audited_inside) || gateway_refused {
        audit_call(cp, &actor, endpoint, &params, &reply).await;
    }
    reply
}

async fn audit_call(
    cp: &ControlPlane,
    actor: &str,
    endpoint: &Endpoint,
    params: &[String],
    reply: &Reply,
) {
    let status = reply.status();
    let action = match endpoint.op {
        Op::PutTable => "table.put",
        Op::StartFlip | Op::StartFlips => "flip.start",
        Op::Evacuate => "region.evacuate",
        Op::Restore => "region.restore",
        Op::ConfirmFlip => "flip.confirm",
        Op::CancelFlip => "flip.cancel",
        Op::ExtendFlip => "flip.extend",
        Op::Report => "gateway.report",
        Op::Watch => "gateway.watch",
        Op::Plan => "table.plan",
        Op::ResolveUnit => "unit.resolve",
        Op::ForgetGateway => "gateway.forget",
        _ => endpoint.path,
    };
    let detail = reply_message(reply);
    cp.audit(AuditEntry {
        at_ms: now_ms(),
        actor: actor.to_owned(),
        action: action.into(),
        target: params.first().cloned().unwrap_or_else(|| "table".into()),
        outcome: if status.is_success() {
            AuditOutcome::Ok
        } else if status.is_client_error() {
            AuditOutcome::Refused
        } else {
            AuditOutcome::Failed
        },
        status: Some(status.as_u16()),
        version_before: Some(cp.store.current_version()),
        version_after: None,
        reason: None,
        flip: None,
        detail,
    })
    .await;
}

async fn dispatch(
    cp: &Arc<ControlPlane>,
    op: Op,
    principal: Option<&Principal>,
    params: &[String],
    request: Request<Incoming>,
) -> Handled {
    let actor = principal.map_or("-", |p| p.name.as_str());
    let param = |i: usize| params.get(i).map(String::as_str).unwrap_or_default();
    match op {
        Op::Health => status::health(cp),
        Op::Metrics => status::metrics(cp),
        Op::OpenApi => status::openapi(),
        Op::GetTable => table::get_table(cp).await,
        Op::GetVersion => table::get_version(cp, param(0)).await,
        Op::Plan => table::plan(cp, request).await,
        Op::PutTable => table::put_table(cp, actor, request).await,
        Op::StartFlip => flips::start_flip(cp, actor, param(0), request).await,
        Op::ListFlips => flips::list_flips(cp).await,
        Op::GetFlip => flips::get_flip(cp, param(0)).await,
        Op::ConfirmFlip => flips::signal_flip(cp, param(0), FlipSignal::Confirm).await,
        Op::CancelFlip => flips::signal_flip(cp, param(0), FlipSignal::Cancel).await,
        Op::ExtendFlip => flips::extend_flip(cp, param(0), request).await,
        Op::ResolveUnit => flips::resolve_unit(cp, actor, param(0), request).await,
        Op::StartFlips => flips::start_flips(cp, actor, request).await,
        Op::Explain => status::explain(cp, request).await,
        Op::Evacuate => flips::evacuate(cp, actor, param(0), request).await,
        Op::Restore => flips::restore(cp, actor, param(0), request).await,
        Op::Gateways => gateways::list_gateways(cp),
        Op::ForgetGateway => gateways::forget_gateway(cp, param(0)).await,
        Op::Watch => gateways::watch(cp, principal, request.uri().query()).await,
        Op::Report => gateways::report(cp, principal, request).await,
        Op::Status => status::status(cp).await,
        Op::Audit => status::audit_log(cp, request.uri().query()).await,
    }
}
