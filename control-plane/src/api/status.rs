//! What operators and monitoring read: `/healthz`, `/metrics`, the API document,
//! `GET /v1/status`, `GET /v1/audit`.

use bytes::Bytes;
use control_api::{ExplainRequest, ExplainResult, FlipState, Status, UnitStatus};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use router_rules::{DecisionReport, KeyPlacement, SimpleRequest};

use super::reply::{Handled, Refusal, json, json_body, query};
use crate::ControlPlane;

pub fn health(cp: &ControlPlane) -> Handled {
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "version": cp.store.current_version(),
            "store": cp.store.kind(),
            "replica": cp.replica,
        }),
    ))
}

pub fn metrics(cp: &ControlPlane) -> Handled {
    let mut reply = Response::new(Full::new(Bytes::from(crate::metrics::render(
        &cp.metrics,
        cp.store.current_version(),
        &cp.registry.list(),
    ))));
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(reply)
}

pub fn openapi() -> Handled {
    Ok(json(StatusCode::OK, &crate::openapi::document()))
}

pub async fn status(cp: &ControlPlane) -> Handled {
    let flips = cp.store.flips().await.unwrap_or_default();
    let running = |unit: &str| {
        flips
            .iter()
            .rev()
            .find(|f| f.moves_unit(unit) && f.state == FlipState::Running)
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

pub async fn explain(cp: &ControlPlane, request: Request<Incoming>) -> Handled {
    let ask: ExplainRequest = json_body(request, cp.config.max_body_bytes).await?;
    let table = cp
        .compiled()
        .map_err(|e| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "stored_table_invalid",
                e.render("table"),
            )
        })?
        .ok_or_else(|| Refusal::new(StatusCode::CONFLICT, "no_table", "no table stored yet"))?;
    let entry = match &ask.entry_region {
        None => table.center_unit().region,
        Some(name) => table.region_index(name).ok_or_else(|| {
            let known: Vec<&str> = table.regions().iter().map(|r| &*r.name).collect();
            Refusal::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_region",
                format!(
                    "body.entry_region: {name:?} is not in the table (regions: {})",
                    known.join(", ")
                ),
            )
        })?,
    };
    if !ask.path.starts_with('/') {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "body.path: starts with /",
        ));
    }
    let mut request = SimpleRequest::new(&ask.method.to_ascii_uppercase(), &ask.path);
    for (name, value) in &ask.headers {
        request.add_header(&name.to_ascii_lowercase(), value);
    }
    let mut notes = Vec::new();
    if let Some(user) = &ask.user {
        match router_rules::place_key(&table, &mut request, user).map_err(|m| {
            Refusal::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("body.user: {m}"),
            )
        })? {
            KeyPlacement::Placed => {}
            KeyPlacement::NotUsed(why) => notes.push(format!("user not used: {why}")),
        }
    }
    let decision = table.resolve(&request, entry);
    let report = DecisionReport::new(&table, &decision, &request.method);
    Ok(json(
        StatusCode::OK,
        &ExplainResult {
            version: table.version(),
            decision: serde_json::to_value(&report).unwrap_or_default(),
            notes,
        },
    ))
}

pub async fn audit_log(cp: &ControlPlane, query_string: Option<&str>) -> Handled {
    let mut entries = cp.store.audit_log().await?;
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
