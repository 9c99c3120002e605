//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/table`. Bound to loopback unless
//! configured otherwise.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;

use crate::metrics::Metrics;
use crate::store::TableStore;
use crate::upstream::Body;

/// What the admin endpoints read.
pub struct AdminState {
    /// The table store.
    pub store: Arc<TableStore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set while draining: `/readyz` turns 503 so load balancers stop sending.
    pub draining: AtomicBool,
    /// Memory for request bodies held whole (`limits.max_buffered_body_bytes`).
    pub body_budget: Arc<crate::limits::BodyBudget>,
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Serve one admin request.
pub async fn handle(
    state: Arc<AdminState>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            json!({"error": "the admin endpoints are read-only"}).to_string(),
        ));
    }
    let snapshot = state.store.current();
    let response = match request.uri().path() {
        "/healthz" => reply(StatusCode::OK, "application/json", json!({"status": "ok"}).to_string()),
        "/readyz" => {
            let draining = state.draining.load(Ordering::Relaxed);
            let (status, text) = match (&snapshot, draining) {
                (_, true) => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
                (None, false) => (StatusCode::SERVICE_UNAVAILABLE, "no routing table"),
                (Some(_), false) => (StatusCode::OK, "ready"),
            };
            reply(
                status,
                "application/json",
                json!({"status": text, "table_version": snapshot.as_ref().map(|s| s.table.version())}).to_string(),
            )
        }
        "/metrics" => {
            let health = match &snapshot {
                Some(s) => {
                    let region = &s.table.regions()[s.region];
                    s.here()
                        .pools
                        .iter()
                        .enumerate()
                        .filter_map(|(service, pool)| pool.as_ref().map(|p| (service, p)))
                        .flat_map(|(service, pool)| {
                            pool.endpoints.iter().map(move |e| {
                                (
                                    region.name.to_string(),
                                    s.table.services()[service].to_string(),
                                    e.address.to_string(),
                                    e.health.is_healthy(),
                                )
                            })
                        })
                        .collect()
                }
                None => Vec::new(),
            };
            let mut text = state.metrics.render(&health);
            text.push_str("# HELP unitgate_buffered_body_bytes Bytes of request bodies held whole now (limits.max_buffered_body_bytes).\n# TYPE unitgate_buffered_body_bytes gauge\n");
            text.push_str(&format!(
                "unitgate_buffered_body_bytes {}\n",
                state.body_budget.held()
            ));
            let (settled, writes) = state.store.writes_in_flight();
            text.push_str(&format!(
                "# HELP unitgate_writes_in_flight Writes routed to a unit and not over yet, by any table version.\n# TYPE unitgate_writes_in_flight gauge\nunitgate_writes_in_flight {writes}\n# HELP unitgate_table_settled_version The table version reported to the control plane as applied: the one in force, or an older one while writes it routed to a unit the newer moved or froze go on.\n# TYPE unitgate_table_settled_version gauge\nunitgate_table_settled_version {settled}\n"
            ));
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        "/table" => {
            let body = match &snapshot {
                Some(s) => json!({
                    "region": state.store.region(),
                    "version": s.table.version(),
                    "origin": s.origin,
                    "applied_at_s": s.applied_at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default(),
                    "summary": {
                        "slots": s.table.slot_count(),
                        "regions": s.table.regions().iter().map(|r| &*r.name).collect::<Vec<_>>(),
                        "units": s.table.units().iter().map(|u| json!({
                            "name": &*u.name,
                            "region": &*s.table.regions()[u.region].name,
                            "state": u.state.as_str(),
                            "center": u.center,
                        })).collect::<Vec<_>>(),
                        "routes": s.table.routes().iter().map(|r| &*r.name).collect::<Vec<_>>(),
                    },
                    "last_rejected": state.store.last_rejected(),
                    "table": s.table.raw(),
                }),
                None => json!({
                    "region": state.store.region(),
                    "version": null,
                    "last_rejected": state.store.last_rejected(),
                }),
            };
            reply(StatusCode::OK, "application/json", body.to_string())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "application/json",
            json!({"error": "not found", "endpoints": ["/healthz", "/readyz", "/metrics", "/table"]}).to_string(),
        ),
    };
    Ok(response)
}
