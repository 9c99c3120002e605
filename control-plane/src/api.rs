//! The HTTP API: one table of endpoints ([`ENDPOINTS`]) that the router, the authorisation
//! check, the OpenAPI document and the tests all read, and one handler per endpoint.
//!
//! Every error is a JSON [`ApiError`] naming what is wrong; every mutating call is audited,
//! whether it succeeded or not.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use control_api::{
    ApiError, ApiProblem, AuditEntry, AuditOutcome, DIGEST_HEADER, FORCE_HEADER, FlipAccepted,
    FlipMode, FlipRecord, FlipRequest, FlipState, GatewayReport, PlanResult, PutResult,
    ResolveRequest, ResolveResult, Status, StoredTable, UnitStatus, VERSION_HEADER, now_ms,
};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use router_rules::{CompiledTable, RawTable, SourceMap, UnitState};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::{AuthFailure, Need, Principal};
use crate::registry::Sighting;
use crate::store::{FlipSignal, PutOutcome};
use crate::{AppliedCheck, ControlPlane, admission, flip};

/// What an endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /v1/openapi.json`.
    OpenApi,
    /// `GET /v1/table`.
    GetTable,
    /// `GET /v1/table/versions/{n}`.
    GetVersion,
    /// `POST /v1/table/plan`.
    Plan,
    /// `PUT /v1/table`.
    PutTable,
    /// `POST /v1/units/{unit}/flip`.
    StartFlip,
    /// `GET /v1/flips`.
    ListFlips,
    /// `GET /v1/flips/{id}`.
    GetFlip,
    /// `POST /v1/flips/{id}/confirm`.
    ConfirmFlip,
    /// `POST /v1/flips/{id}/cancel`.
    CancelFlip,
    /// `GET /v1/gateways`.
    Gateways,
    /// `GET /v1/status`.
    Status,
    /// `GET /v1/audit`.
    Audit,
    /// `GET /v1/watch`.
    Watch,
    /// `POST /v1/report`.
    Report,
    /// `POST /v1/units/{unit}/resolve`.
    ResolveUnit,
    /// `DELETE /v1/gateways/{id}`.
    ForgetGateway,
}

/// One endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Method.
    pub method: Method,
    /// Path, with `{name}` for a path parameter.
    pub path: &'static str,
    /// Who may call it.
    pub need: Need,
    /// What it does.
    pub op: Op,
    /// One line for the API document.
    pub summary: &'static str,
    /// Statuses it answers besides 401/403 (for the API document and its test).
    pub statuses: &'static [u16],
}

const fn endpoint(
    method: Method,
    path: &'static str,
    need: Need,
    op: Op,
    summary: &'static str,
    statuses: &'static [u16],
) -> Endpoint {
    Endpoint {
        method,
        path,
        need,
        op,
        summary,
        statuses,
    }
}

/// Every endpoint of the API.
pub const ENDPOINTS: &[Endpoint] = &[
    endpoint(
        Method::GET,
        "/healthz",
        Need::Nothing,
        Op::Health,
        "Liveness: the process answers.",
        &[200],
    ),
    endpoint(
        Method::GET,
        "/metrics",
        Need::Read,
        Op::Metrics,
        "Prometheus metrics.",
        &[200],
    ),
    endpoint(
        Method::GET,
        "/v1/openapi.json",
        Need::Read,
        Op::OpenApi,
        "This API's OpenAPI document.",
        &[200],
    ),
    endpoint(
        Method::GET,
        "/v1/table",
        Need::Read,
        Op::GetTable,
        "The table in force, with its version.",
        &[200, 404],
    ),
    endpoint(
        Method::GET,
        "/v1/table/versions/{n}",
        Need::Read,
        Op::GetVersion,
        "One stored version.",
        &[200, 400, 404],
    ),
    endpoint(
        Method::POST,
        "/v1/table/plan",
        Need::Operate,
        Op::Plan,
        "Validate a proposed table (YAML or JSON) and show what it changes; stores nothing.",
        &[200, 400, 413, 415],
    ),
    endpoint(
        Method::PUT,
        "/v1/table",
        Need::Admin,
        Op::PutTable,
        "Store a table as the next version (If-Match: the version in force) and push it. A table that moves units to other regions or slots is refused (422) unless an admin forces it with X-Unitgate-Force: <reason>; flips move units.",
        &[200, 400, 409, 413, 422, 428, 503],
    ),
    endpoint(
        Method::POST,
        "/v1/units/{unit}/flip",
        Need::Operate,
        Op::StartFlip,
        "Start a planned or emergency flip of a unit.",
        &[202, 400, 404, 409, 413, 422, 503],
    ),
    endpoint(
        Method::GET,
        "/v1/flips",
        Need::Read,
        Op::ListFlips,
        "Every flip, oldest first.",
        &[200, 503],
    ),
    endpoint(
        Method::GET,
        "/v1/flips/{id}",
        Need::Read,
        Op::GetFlip,
        "A flip's steps, timestamps and outcomes.",
        &[200, 404, 503],
    ),
    endpoint(
        Method::POST,
        "/v1/flips/{id}/confirm",
        Need::Operate,
        Op::ConfirmFlip,
        "Confirm that the data caught up (flips waiting for confirmation).",
        &[202, 404, 409, 503],
    ),
    endpoint(
        Method::POST,
        "/v1/flips/{id}/cancel",
        Need::Operate,
        Op::CancelFlip,
        "Cancel a running flip: it rolls back.",
        &[202, 404, 409, 503],
    ),
    endpoint(
        Method::POST,
        "/v1/units/{unit}/resolve",
        Need::Operate,
        Op::ResolveUnit,
        "Settle a unit whose flip could not be recovered: set its state in the region it is in, and lift its lock.",
        &[200, 400, 404, 409, 413, 422, 503],
    ),
    endpoint(
        Method::GET,
        "/v1/gateways",
        Need::Read,
        Op::Gateways,
        "Every gateway seen, with the version it serves.",
        &[200],
    ),
    endpoint(
        Method::DELETE,
        "/v1/gateways/{id}",
        Need::Operate,
        Op::ForgetGateway,
        "Forget a gateway taken out of service, so that flips stop waiting for it.",
        &[204, 404, 503],
    ),
    endpoint(
        Method::GET,
        "/v1/status",
        Need::Read,
        Op::Status,
        "Units (region, state, running flip) and gateways in one look.",
        &[200],
    ),
    endpoint(
        Method::GET,
        "/v1/audit",
        Need::Read,
        Op::Audit,
        "The audit log, oldest first (?limit=N: the last N).",
        &[200, 400, 503],
    ),
    endpoint(
        Method::GET,
        "/v1/watch",
        Need::Gateway,
        Op::Watch,
        "Gateways: long-poll for the next version after ?after=N (200 with the table, or 204 when none came within the hold time). A gateway serving other content than the stored version it names gets the stored one at once.",
        &[200, 204, 400, 422],
    ),
    endpoint(
        Method::POST,
        "/v1/report",
        Need::Gateway,
        Op::Report,
        "Gateways: report the version served and any refused one.",
        &[204, 400, 413, 422],
    ),
];

type Reply = Response<Full<Bytes>>;

/// Calls without a valid token, for the log.
static UNAUTHENTICATED: control_api::throttle::LogThrottle =
    control_api::throttle::LogThrottle::new();

fn json<T: Serialize>(status: StatusCode, body: &T) -> Reply {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Reply {
    api_error(
        status,
        ApiError {
            error: code.into(),
            message: message.into(),
            problems: Vec::new(),
        },
    )
}

fn api_error(status: StatusCode, body: ApiError) -> Reply {
    let mut reply = json(status, &body);
    reply.extensions_mut().insert(ErrorMessage(body.message));
    reply
}

fn empty(status: StatusCode) -> Reply {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// An error answer, carried out of a handler with `?` (boxed: answers are large).
struct Refusal(Box<Reply>);

impl Refusal {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self(Box::new(error(status, code, message)))
    }
}

type Handled = Result<Reply, Refusal>;

/// Path parameters, in the order the pattern names them.
fn match_path<'p>(pattern: &str, path: &'p str) -> Option<Vec<&'p str>> {
    let mut params = Vec::new();
    let mut pattern_parts = pattern.split('/');
    let mut path_parts = path.split('/');
    loop {
        match (pattern_parts.next(), path_parts.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(s)) if p.starts_with('{') && !s.is_empty() => params.push(s),
            (Some(p), Some(s)) if p == s => {}
            _ => return None,
        }
    }
}

/// The value of `name` in a query string (no percent-decoding: the API's parameters are
/// numbers and names).
fn query<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn is_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

/// Serve one request.
pub async fn handle(cp: Arc<ControlPlane>, request: Request<Incoming>) -> Reply {
    let reply = route(&cp, request).await;
    cp.metrics.response(reply.status().as_u16());
    reply
}

async fn route(cp: &Arc<ControlPlane>, request: Request<Incoming>) -> Reply {
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
    let audited_inside =
        matches!(op, Op::PutTable | Op::StartFlip | Op::ResolveUnit) && reply.status().is_success();
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
    if (mutating && op != Op::Plan && !audited_inside) || gateway_refused {
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
        Op::StartFlip => "flip.start",
        Op::ConfirmFlip => "flip.confirm",
        Op::CancelFlip => "flip.cancel",
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

/// The message of an error answer, kept beside the body for the audit log.
#[derive(Debug, Clone)]
struct ErrorMessage(String);

fn reply_message(reply: &Reply) -> Option<String> {
    reply
        .extensions()
        .get::<ErrorMessage>()
        .map(|m| m.0.clone())
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
        Op::Health => Ok(json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "ok",
                "version": cp.store.current_version(),
                "store": cp.store.kind(),
                "replica": cp.replica,
            }),
        )),
        Op::Metrics => {
            let mut reply = Response::new(Full::new(Bytes::from(crate::metrics::render(cp))));
            reply.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(reply)
        }
        Op::OpenApi => Ok(json(StatusCode::OK, &crate::openapi::document())),
        Op::GetTable => get_table(cp),
        Op::GetVersion => get_version(cp, param(0)).await,
        Op::Plan => plan(cp, request).await,
        Op::PutTable => put_table(cp, actor, request).await,
        Op::StartFlip => start_flip(cp, actor, param(0), request).await,
        Op::ListFlips => Ok(json(
            StatusCode::OK,
            &cp.store.flips().await.map_err(unavailable)?,
        )),
        Op::GetFlip => Ok(json(StatusCode::OK, &find_flip(cp, param(0)).await?)),
        Op::ConfirmFlip => signal_flip(cp, param(0), FlipSignal::Confirm).await,
        Op::CancelFlip => signal_flip(cp, param(0), FlipSignal::Cancel).await,
        Op::Gateways => Ok(json(StatusCode::OK, &cp.registry.list())),
        Op::ForgetGateway => forget_gateway(cp, param(0)).await,
        Op::Status => status(cp).await,
        Op::Audit => audit_log(cp, request.uri().query()).await,
        Op::Watch => watch(cp, principal, request.uri().query()).await,
        Op::Report => report(cp, principal, request).await,
        Op::ResolveUnit => resolve_unit(cp, actor, param(0), request).await,
    }
}

fn unavailable(error: crate::store::StoreError) -> Refusal {
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        error.to_string(),
    )
}

async fn read_body(
    cp: &ControlPlane,
    request: Request<Incoming>,
) -> Result<(Bytes, bool), Refusal> {
    let limit = cp.config.max_body_bytes;
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok((collected.to_bytes(), json)),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("cannot read the request body: {e}"),
        )),
    }
}

/// Parse a JSON body as `T`, naming the field path of any error.
fn parse_json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." || path.is_empty() {
            "body".to_owned()
        } else {
            format!("body.{path}")
        };
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("{at}: {}", e.inner()),
        )
    })
}

fn table_problems(
    status: StatusCode,
    code: &str,
    message: &str,
    error: &router_rules::TableError,
) -> Refusal {
    Refusal(Box::new(api_error(
        status,
        ApiError {
            error: code.into(),
            message: format!("{message}: {}", error.render("body").trim_end()),
            problems: error.problems.iter().map(ApiProblem::from).collect(),
        },
    )))
}

/// Parse a table body (JSON when the content type says so, YAML otherwise), renumber it as
/// `version` and validate it against the table in force.
fn proposed_table(
    body: &[u8],
    json_body: bool,
    version: u64,
    current: Option<&StoredTable>,
) -> Result<CompiledTable, router_rules::TableError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        router_rules::TableError::single(router_rules::Problem::at(
            "",
            format!("the body is not UTF-8: {e}"),
        ))
    })?;
    let (mut raw, source): (RawTable, Option<SourceMap>) = if json_body {
        (router_rules::parse_json(text)?, None)
    } else {
        let (raw, source) = router_rules::parse_yaml(text)?;
        (raw, Some(source))
    };
    // The store numbers versions; whatever the body says is replaced.
    raw.version = version;
    let table = router_rules::validate(raw, source.as_ref())?;
    if let Some(current) = current {
        let current = router_rules::validate(current.table.clone(), None)?;
        router_rules::check_successor(&current, &table)?;
    }
    Ok(table)
}

fn get_table(cp: &ControlPlane) -> Handled {
    let current = cp.store.current().ok_or_else(|| {
        Refusal::new(
            StatusCode::NOT_FOUND,
            "no_table",
            "no table stored yet: PUT /v1/table with If-Match: 0",
        )
    })?;
    let mut reply = json(StatusCode::OK, &*current);
    reply
        .headers_mut()
        .insert(VERSION_HEADER, HeaderValue::from(current.version));
    reply
        .headers_mut()
        .insert(header::ETAG, etag(current.version));
    Ok(reply)
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

async fn get_version(cp: &ControlPlane, n: &str) -> Handled {
    let version: u64 = n.parse().map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_version",
            format!("version {n:?} is not a number"),
        )
    })?;
    match cp.store.version(version).await.map_err(unavailable)? {
        Some(stored) => Ok(json(StatusCode::OK, &stored)),
        None => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "no_such_version",
            format!(
                "version {version} is not stored (the version in force is {})",
                cp.store.current_version()
            ),
        )),
    }
}

/// Run table validation on the blocking pool: a large table takes its time there, not on the
/// threads that answer `/healthz` and hold the gateways' watches.
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("table validation did not finish: {e}"),
        )
    })
}

async fn plan(cp: &ControlPlane, request: Request<Incoming>) -> Handled {
    let (body, json_body) = read_body(cp, request).await?;
    if body.trim_ascii().is_empty() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "the request body is empty: send the proposed table (YAML, or JSON with Content-Type: application/json)",
        ));
    }
    let current = cp.store.current();
    let result = off_thread(move || plan_result(&body, json_body, current)).await??;
    Ok(json(StatusCode::OK, &result))
}

fn plan_result(
    body: &[u8],
    json_body: bool,
    current: Option<Arc<StoredTable>>,
) -> Result<PlanResult, Refusal> {
    let current_version = current.as_ref().map_or(0, |c| c.version);
    let next_version = current_version + 1;
    let result = match proposed_table(body, json_body, next_version, current.as_deref()) {
        Ok(table) => {
            let diff = match &current {
                Some(current) => {
                    let old = router_rules::validate(current.table.clone(), None).map_err(|e| {
                        table_problems(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "stored_table_invalid",
                            "the stored table",
                            &e,
                        )
                    })?;
                    serde_json::to_value(router_rules::diff(&old, &table)).ok()
                }
                None => None,
            };
            let moves = current
                .as_ref()
                .map(|c| admission::unit_moves(&c.table, table.raw()))
                .unwrap_or_default();
            PlanResult {
                valid: true,
                current_version,
                next_version,
                problems: Vec::new(),
                put_refused: (!moves.is_empty()).then(|| admission::refusal(&moves)),
                moves,
                diff,
            }
        }
        Err(error) => PlanResult {
            valid: false,
            current_version,
            next_version,
            problems: error.problems.iter().map(ApiProblem::from).collect(),
            moves: Vec::new(),
            put_refused: None,
            diff: None,
        },
    };
    Ok(result)
}

fn if_match(request_headers: &http::HeaderMap) -> Result<u64, Refusal> {
    let value = request_headers.get(header::IF_MATCH).ok_or_else(|| {
        Refusal::new(
            StatusCode::PRECONDITION_REQUIRED,
            "if_match_required",
            "PUT /v1/table needs If-Match: <the version in force> (0 for the first table), so that a write never overwrites a change it has not seen",
        )
    })?;
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_if_match",
                format!("If-Match: {value:?} is not a version number"),
            )
        })
}

async fn put_table(cp: &ControlPlane, actor: &str, request: Request<Incoming>) -> Handled {
    let expected = if_match(request.headers())?;
    let header_text = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    };
    let reason = header_text("x-unitgate-reason");
    let forced = header_text(FORCE_HEADER);
    if forced.as_deref() == Some("") {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_force",
            format!("{FORCE_HEADER}: give the reason for moving units without a flip"),
        ));
    }
    let (body, json_body) = read_body(cp, request).await?;
    let current = cp.store.current();
    let current_version = current.as_ref().map_or(0, |c| c.version);
    let stale = |now: u64| {
        Refusal::new(
            StatusCode::CONFLICT,
            "stale_version",
            format!(
                "If-Match: {expected}, but the version in force is {now}: the table was changed since yours was fetched; fetch it again (unitctl table get), redo the edit and retry"
            ),
        )
    };
    // This replica's copy of the version in force may lag behind the store's (etcd), never
    // lead it: an older If-Match is stale for sure; a newer one is for the store's
    // compare-and-swap to judge.
    if expected < current_version {
        return Err(stale(current_version));
    }
    let proposing = current.clone();
    let table =
        off_thread(move || proposed_table(&body, json_body, expected + 1, proposing.as_deref()))
            .await?
            .map_err(|e| {
                table_problems(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_table",
                    "the table was refused",
                    &e,
                )
            })?;
    let moves = current
        .as_ref()
        .map(|c| admission::unit_moves(&c.table, table.raw()))
        .unwrap_or_default();
    if !moves.is_empty() && forced.is_none() {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "moves_units",
            admission::refusal(&moves),
        ));
    }
    let mut stored = StoredTable::new(table.raw().clone(), actor, reason.clone(), None);
    let mut detail = None;
    if let Some(why) = &forced
        && !moves.is_empty()
    {
        stored.forced = Some(why.clone());
        detail = Some(format!(
            "forced: moves units without a flip ({}): {why}",
            admission::summary(&moves)
        ));
    }
    let version = stored.version;
    let audit = AuditEntry {
        at_ms: stored.stored_at_ms,
        actor: actor.to_owned(),
        action: if detail.is_some() {
            "table.put.forced".into()
        } else {
            "table.put".into()
        },
        target: "table".into(),
        outcome: AuditOutcome::Ok,
        status: Some(200),
        version_before: Some(expected),
        version_after: Some(version),
        reason,
        flip: None,
        detail,
    };
    match cp
        .write_version(expected, stored, audit, None)
        .await
        .map_err(unavailable)?
    {
        PutOutcome::Stored(version) => {
            let mut reply = json(StatusCode::OK, &PutResult { version });
            reply.headers_mut().insert(header::ETAG, etag(version));
            Ok(reply)
        }
        PutOutcome::Stale(now) => Err(stale(now)),
        PutOutcome::LockLost => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the write was fenced off",
        )),
    }
}

async fn start_flip(
    cp: &Arc<ControlPlane>,
    actor: &str,
    unit: &str,
    request: Request<Incoming>,
) -> Handled {
    let (body, _) = read_body(cp, request).await?;
    let ask: FlipRequest = parse_json_body(&body)?;
    let current = cp
        .store
        .current()
        .ok_or_else(|| Refusal::new(StatusCode::CONFLICT, "no_table", "no table stored yet"))?;
    let table = &current.table;
    let Some(placed) = table.units.iter().find(|u| u.name == unit) else {
        let known: Vec<&str> = table.units.iter().map(|u| u.name.as_str()).collect();
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "unknown_unit",
            format!(
                "unit {unit:?} is not in the table (units: {})",
                known.join(", ")
            ),
        ));
    };
    let unprocessable =
        |m: String| Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_flip", m);
    if !table.regions.iter().any(|r| r.name == ask.to) {
        let known: Vec<&str> = table.regions.iter().map(|r| r.name.as_str()).collect();
        return Err(unprocessable(format!(
            "body.to: region {:?} is not in the table (regions: {})",
            ask.to,
            known.join(", ")
        )));
    }
    if placed.region == ask.to {
        return Err(unprocessable(format!(
            "body.to: unit {unit} is already in region {}",
            ask.to
        )));
    }
    if ask.reason.trim().is_empty() {
        return Err(unprocessable(
            "body.reason: say why (it goes to the audit log)".into(),
        ));
    }
    match (&ask.replication_check, ask.mode) {
        (Some(_), FlipMode::Emergency) => {
            return Err(unprocessable(
                "body.replication_check: emergency flips do not wait for replication; drop it or use mode planned".into(),
            ));
        }
        (Some(check), FlipMode::Planned) => {
            flip::check_replication(check).map_err(|m| unprocessable(format!("body.{m}")))?;
        }
        (None, _) => {}
    }
    // Refuse now what a step would refuse later: the switched table must be valid.
    flip::with_placement(table, unit, &ask.to, UnitState::Active, current.version + 1)
        .map_err(|m| unprocessable(format!("body.to: {m}")))?;
    if ask.converge_timeout_s == Some(0) {
        return Err(unprocessable(
            "body.converge_timeout_s: must be at least 1".into(),
        ));
    }
    let id = flip::new_id();
    let Some(lock) = cp.store.lock_unit(unit, &id).await.map_err(unavailable)? else {
        if let Some(block) = cp.store.unit_block(unit).await.map_err(unavailable)? {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                "unit_locked",
                block.describe(),
            ));
        }
        let running = cp
            .store
            .flips()
            .await
            .ok()
            .and_then(|f| {
                f.into_iter()
                    .rev()
                    .find(|f| f.unit == unit && f.state == FlipState::Running)
            })
            .map_or_else(String::new, |f| format!(" ({})", f.id));
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "flip_in_progress",
            format!(
                "a flip of unit {unit} is already running{running}; one flip per unit at a time"
            ),
        ));
    };
    let record = FlipRecord {
        id: id.clone(),
        unit: unit.to_owned(),
        from: placed.region.clone(),
        to: ask.to.clone(),
        mode: ask.mode,
        reason: ask.reason.clone(),
        actor: actor.to_owned(),
        replication_check: ask.replication_check.clone(),
        converge_timeout_s: ask
            .converge_timeout_s
            .unwrap_or(flip::DEFAULT_CONVERGE_TIMEOUT_S),
        pre_flip_version: current.version,
        state: FlipState::Running,
        owner: cp.replica.clone(),
        created_at_ms: now_ms(),
        finished_at_ms: None,
        confirmed: false,
        cancel_requested: false,
        error: None,
        steps: Vec::new(),
    };
    cp.store.put_flip(&record).await.map_err(unavailable)?;
    cp.audit(AuditEntry {
        at_ms: record.created_at_ms,
        actor: actor.to_owned(),
        action: "flip.start".into(),
        target: unit.to_owned(),
        outcome: AuditOutcome::Ok,
        status: Some(202),
        version_before: Some(current.version),
        version_after: None,
        reason: Some(ask.reason.clone()),
        flip: Some(id.clone()),
        detail: Some(format!(
            "{:?} flip {} -> {}",
            ask.mode, record.from, record.to
        )),
    })
    .await;
    tokio::spawn(flip::run(cp.clone(), record, lock));
    let location = format!("/v1/flips/{id}");
    let mut reply = json(
        StatusCode::ACCEPTED,
        &FlipAccepted {
            id,
            location: location.clone(),
        },
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        reply.headers_mut().insert(header::LOCATION, value);
    }
    Ok(reply)
}

async fn find_flip(cp: &ControlPlane, id: &str) -> Result<FlipRecord, Refusal> {
    cp.store
        .flip(id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::NOT_FOUND,
                "unknown_flip",
                format!("no flip {id:?}"),
            )
        })
}

async fn signal_flip(cp: &ControlPlane, id: &str, signal: FlipSignal) -> Handled {
    let flip = find_flip(cp, id).await?;
    if flip.state.is_final() {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "flip_ended",
            format!("flip {id} already ended ({:?})", flip.state),
        ));
    }
    if signal == FlipSignal::Confirm
        && flip
            .replication_check
            .as_ref()
            .is_none_or(|c| c.confirm != Some(true))
    {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "no_confirmation_expected",
            format!("flip {id} does not wait for a confirmation"),
        ));
    }
    cp.store
        .signal_flip(id, signal)
        .await
        .map_err(unavailable)?;
    cp.wake_flip(id);
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "id": id, "signal": format!("{signal:?}").to_lowercase() }),
    ))
}

async fn status(cp: &ControlPlane) -> Handled {
    let flips = cp.store.flips().await.unwrap_or_default();
    let running = |unit: &str| {
        flips
            .iter()
            .rev()
            .find(|f| f.unit == unit && f.state == FlipState::Running)
            .map(|f| f.id.clone())
    };
    let current = cp.store.current();
    let mut locked = std::collections::BTreeMap::new();
    if let Some(t) = &current {
        for u in &t.table.units {
            if let Ok(Some(block)) = cp.store.unit_block(&u.name).await {
                locked.insert(u.name.clone(), block.describe());
            }
        }
    }
    let units = current
        .as_ref()
        .map(|t| {
            t.table
                .units
                .iter()
                .map(|u| UnitStatus {
                    name: u.name.clone(),
                    region: u.region.clone(),
                    state: u.state.as_str().into(),
                    standby: u.standby.clone(),
                    center: u.center,
                    slots: u.slots.iter().map(|[a, b]| b.saturating_sub(*a) + 1).sum(),
                    flip: running(&u.name),
                    locked: locked.get(&u.name).cloned(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(json(
        StatusCode::OK,
        &Status {
            version: current.map_or(0, |t| t.version),
            units,
            gateways: cp.registry.list(),
        },
    ))
}

async fn audit_log(cp: &ControlPlane, query_string: Option<&str>) -> Handled {
    let mut entries = cp.store.audit_log().await.map_err(unavailable)?;
    if let Some(limit) = query(query_string, "limit") {
        let limit: usize = limit.parse().map_err(|_| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("limit={limit:?} is not a number"),
            )
        })?;
        let skip = entries.len().saturating_sub(limit);
        entries.drain(..skip);
    }
    Ok(json(StatusCode::OK, &entries))
}

/// Check what a gateway says of itself against its token's binding and the store: `403`
/// outside the binding, `422` for a version never stored; otherwise the sighting to record.
async fn admit_gateway(
    cp: &ControlPlane,
    principal: Option<&Principal>,
    id: &str,
    region: &str,
    applied: u64,
    digest: Option<String>,
) -> Result<Sighting, Refusal> {
    let binding = principal.and_then(|p| p.binding.as_ref());
    if let Some(why) = binding.map_or_else(
        || Some("the token is not bound to any gateway".to_owned()),
        |b| b.refuses(id, region),
    ) {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "gateway_not_allowed",
            format!("gateway {id:?} of region {region:?}: {why}"),
        ));
    }
    let diverged = match cp
        .check_applied(applied, digest.as_deref())
        .await
        .map_err(unavailable)?
    {
        AppliedCheck::Matches => false,
        AppliedCheck::Diverged => true,
        AppliedCheck::NeverStored => {
            return Err(Refusal::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_version",
                format!(
                    "gateway {id:?} claims to serve version {applied}, which was never stored (the version in force is {})",
                    cp.store.current_version()
                ),
            ));
        }
    };
    if diverged {
        tracing::warn!(
            gateway = id,
            applied,
            digest = digest.as_deref().unwrap_or_default(),
            "a gateway serves other content than the stored version of that number; sending it the stored one"
        );
    }
    Ok(Sighting {
        id: id.to_owned(),
        region: region.to_owned(),
        applied,
        digest,
        diverged,
        rejected: None,
    })
}

/// A table answer for a gateway: the stored version with its number and digest.
fn table_reply(current: &StoredTable) -> Reply {
    let mut reply = json(StatusCode::OK, &current.table);
    reply
        .headers_mut()
        .insert(VERSION_HEADER, HeaderValue::from(current.version));
    if let Ok(digest) = HeaderValue::from_str(&current.digest) {
        reply.headers_mut().insert(DIGEST_HEADER, digest);
    }
    reply
}

fn is_digest(value: &str) -> bool {
    value
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn watch(
    cp: &ControlPlane,
    principal: Option<&Principal>,
    query_string: Option<&str>,
) -> Handled {
    let bad = |m: String| Refusal::new(StatusCode::BAD_REQUEST, "bad_query", m);
    let number = |name: &str, required: bool| -> Result<Option<u64>, Refusal> {
        match query(query_string, name) {
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| bad(format!("{name}={v:?} is not a number"))),
            None if required => Err(bad(format!("missing query parameter {name}"))),
            None => Ok(None),
        }
    };
    let name = |name: &str| -> Result<&str, Refusal> {
        let value = query(query_string, name)
            .ok_or_else(|| bad(format!("missing query parameter {name}")))?;
        if is_name(value) {
            Ok(value)
        } else {
            Err(bad(format!(
                "{name}={value:?}: use letters, digits and - _ . : @ (at most 128)"
            )))
        }
    };
    let after = number("after", true)?.unwrap_or_default();
    let gateway = name("gateway")?;
    let region = name("region")?;
    let applied = number("applied", false)?.unwrap_or(after);
    let digest = match query(query_string, "digest") {
        Some(d) if is_digest(d) => Some(d.to_owned()),
        Some(d) => {
            return Err(bad(format!(
                "digest={d:?}: expected sha256:<64 hex digits>"
            )));
        }
        None => None,
    };
    let hold = number("timeout_s", false)?
        .unwrap_or(cp.config.watch_hold_s)
        .min(cp.config.watch_hold_s);
    let sighting = admit_gateway(cp, principal, gateway, region, applied, digest).await?;
    let diverged = sighting.diverged;
    let status = cp.gateway_seen(sighting).await;
    if diverged
        && let Some(current) = cp.store.current()
        && status.rejected.as_ref().and_then(|r| r.version) != Some(current.version)
    {
        // Its copy is not the stored one: the stored table in force replaces it now (unless
        // the gateway already refused that one, which it reported).
        return Ok(table_reply(&current));
    }
    let mut versions = cp.store.subscribe();
    cp.metrics.watches_open.fetch_add(1, Ordering::Relaxed);
    let newer =
        tokio::time::timeout(Duration::from_secs(hold), versions.wait_for(|v| *v > after)).await;
    cp.metrics.watches_open.fetch_sub(1, Ordering::Relaxed);
    match (newer, cp.store.current()) {
        (Ok(Ok(_)), Some(current)) if current.version > after => Ok(table_reply(&current)),
        _ => Ok(empty(StatusCode::NO_CONTENT)),
    }
}

async fn report(
    cp: &ControlPlane,
    principal: Option<&Principal>,
    request: Request<Incoming>,
) -> Handled {
    let (body, _) = read_body(cp, request).await?;
    let report: GatewayReport = parse_json_body(&body)?;
    for (field, value) in [("gateway", &report.gateway), ("region", &report.region)] {
        if !is_name(value) {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("body.{field}: {value:?}: use letters, digits and - _ . : @ (at most 128)"),
            ));
        }
    }
    if let Some(digest) = &report.digest
        && !is_digest(digest)
    {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("body.digest: {digest:?}: expected sha256:<64 hex digits>"),
        ));
    }
    let mut sighting = admit_gateway(
        cp,
        principal,
        &report.gateway,
        &report.region,
        report.applied,
        report.digest,
    )
    .await?;
    if let Some(rejected) = &report.rejected {
        tracing::warn!(
            gateway = report.gateway,
            version = rejected.version,
            error = rejected.error,
            "a gateway refused a table version"
        );
    }
    sighting.rejected = report.rejected;
    cp.gateway_seen(sighting).await;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn forget_gateway(cp: &ControlPlane, id: &str) -> Handled {
    if !cp.registry.forget(id) {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "unknown_gateway",
            format!("no gateway {id:?} in the fleet"),
        ));
    }
    cp.store
        .forget_gateway(id, &cp.registry)
        .await
        .map_err(unavailable)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn resolve_unit(
    cp: &ControlPlane,
    actor: &str,
    unit: &str,
    request: Request<Incoming>,
) -> Handled {
    let (body, _) = read_body(cp, request).await?;
    let ask: ResolveRequest = parse_json_body(&body)?;
    if ask.reason.trim().is_empty() {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "body.reason: say why (it goes to the audit log)",
        ));
    }
    let current = cp
        .store
        .current()
        .ok_or_else(|| Refusal::new(StatusCode::CONFLICT, "no_table", "no table stored yet"))?;
    let Some(placed) = current.table.units.iter().find(|u| u.name == unit) else {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "unknown_unit",
            format!("unit {unit:?} is not in the table"),
        ));
    };
    let block = cp.store.unit_block(unit).await.map_err(unavailable)?;
    // Settle the unit under its own lock, so that no flip starts half-way through.
    let holder = format!("resolve-{}", flip::new_id());
    if let Some(block) = &block {
        cp.store
            .lift_block(&block.unit)
            .await
            .map_err(unavailable)?;
    }
    let Some(lock) = cp
        .store
        .lock_unit(unit, &holder)
        .await
        .map_err(unavailable)?
    else {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "flip_in_progress",
            format!(
                "a flip of unit {unit} is running; cancel it instead (POST /v1/flips/{{id}}/cancel)"
            ),
        ));
    };
    let lifted = block.as_ref().map(|b| b.flip.clone());
    let changes = placed.state != ask.state;
    let mut audit = AuditEntry {
        at_ms: now_ms(),
        actor: actor.to_owned(),
        action: "unit.resolve".into(),
        target: unit.to_owned(),
        outcome: AuditOutcome::Ok,
        status: Some(200),
        version_before: Some(current.version),
        version_after: None,
        reason: Some(ask.reason.clone()),
        flip: lifted.clone(),
        detail: Some(format!(
            "unit {unit} {} {} in {}{}",
            if changes { "set" } else { "already" },
            ask.state.as_str(),
            placed.region,
            lifted
                .as_ref()
                .map(|f| format!("; lock of lost flip {f} lifted"))
                .unwrap_or_default()
        )),
    };
    let mut version = current.version;
    if changes {
        let table = flip::with_placement(
            &current.table,
            unit,
            &placed.region,
            ask.state,
            current.version + 1,
        )
        .map_err(|m| Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_table", m))?;
        let stored = StoredTable::new(table, actor, Some(ask.reason.clone()), None);
        audit.at_ms = stored.stored_at_ms;
        audit.version_after = Some(stored.version);
        match cp
            .write_version(current.version, stored, audit, lock.fence())
            .await
            .map_err(unavailable)?
        {
            PutOutcome::Stored(v) => version = v,
            PutOutcome::Stale(_) | PutOutcome::LockLost => {
                return Err(Refusal::new(
                    StatusCode::CONFLICT,
                    "stale_version",
                    "the table changed meanwhile; resolve again",
                ));
            }
        }
    } else {
        cp.audit(audit).await;
    }
    drop(lock);
    Ok(json(
        StatusCode::OK,
        &ResolveResult {
            unit: unit.to_owned(),
            version,
            lifted,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_with_parameters() {
        assert_eq!(
            match_path("/v1/flips/{id}", "/v1/flips/f1"),
            Some(vec!["f1"])
        );
        assert_eq!(match_path("/v1/flips/{id}", "/v1/flips/"), None);
        assert_eq!(match_path("/v1/flips/{id}", "/v1/flips/a/b"), None);
        assert_eq!(
            match_path("/v1/units/{unit}/flip", "/v1/units/u01/flip"),
            Some(vec!["u01"])
        );
        assert_eq!(match_path("/v1/table", "/v1/table/"), None);
    }

    #[test]
    fn every_endpoint_is_reachable_and_unique() {
        for (i, a) in ENDPOINTS.iter().enumerate() {
            for b in &ENDPOINTS[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {} twice",
                    a.method,
                    a.path
                );
            }
        }
    }

    #[test]
    fn query_parameters() {
        let q = Some("after=3&gateway=hz-1&flag");
        assert_eq!(query(q, "after"), Some("3"));
        assert_eq!(query(q, "gateway"), Some("hz-1"));
        assert_eq!(query(q, "flag"), Some(""));
        assert_eq!(query(q, "region"), None);
    }
}
