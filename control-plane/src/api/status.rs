//! What operators and monitoring read: `/healthz`, `/metrics`, the API document,
//! `GET /v1/status`, `GET /v1/audit`.

use bytes::Bytes;
use control_api::{FlipState, Status, UnitStatus};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::reply::{Handled, Refusal, json, query};
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
