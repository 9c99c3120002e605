//! `POST /v1/units/{unit}/flip`, `GET /v1/flips[/{id}]`, `POST /v1/flips/{id}/confirm|cancel`,
//! `POST /v1/units/{unit}/resolve`: HTTP in and out; what a flip may do is flip admission's.

use std::sync::Arc;

use control_api::{
    EvacuateRequest, ExtendRequest, FlipAccepted, FlipRequest, FlipSignalled, MultiFlipRequest,
    ResolveRequest, RestoreRequest,
};
use http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;

use super::reply::{Handled, Refusal, json, json_body, with_audit_detail};
use crate::store::FlipSignal;
use crate::{ControlPlane, flip, units};

pub async fn start_flip(
    cp: &Arc<ControlPlane>,
    actor: &str,
    unit: &str,
    request: Request<Incoming>,
) -> Handled {
    let ask: FlipRequest = json_body(request, cp.config.max_body_bytes).await?;
    accepted(flip::admit::start(cp, actor, unit, ask).await?)
}

pub async fn start_flips(
    cp: &Arc<ControlPlane>,
    actor: &str,
    request: Request<Incoming>,
) -> Handled {
    let ask: MultiFlipRequest = json_body(request, cp.config.max_body_bytes).await?;
    accepted(flip::admit::start_many(cp, actor, ask).await?)
}

pub async fn evacuate(
    cp: &Arc<ControlPlane>,
    actor: &str,
    region: &str,
    request: Request<Incoming>,
) -> Handled {
    let ask: EvacuateRequest = json_body(request, cp.config.max_body_bytes).await?;
    accepted(flip::admit::evacuate(cp, actor, region, ask).await?)
}

pub async fn restore(
    cp: &Arc<ControlPlane>,
    actor: &str,
    region: &str,
    request: Request<Incoming>,
) -> Handled {
    let ask: RestoreRequest = json_body(request, cp.config.max_body_bytes).await?;
    accepted(flip::admit::restore(cp, actor, region, ask).await?)
}

/// `202` with where to follow a started flip.
fn accepted(record: control_api::FlipRecord) -> Handled {
    let location = control_api::paths::fill(control_api::paths::FLIP, &[&record.id]);
    let mut reply = json(
        StatusCode::ACCEPTED,
        &FlipAccepted {
            id: record.id,
            location: location.clone(),
        },
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        reply.headers_mut().insert(header::LOCATION, value);
    }
    Ok(reply)
}

pub async fn list_flips(cp: &ControlPlane) -> Handled {
    Ok(json(StatusCode::OK, &cp.store.flips().await?))
}

pub async fn get_flip(cp: &ControlPlane, id: &str) -> Handled {
    Ok(json(StatusCode::OK, &flip::admit::find(cp, id).await?))
}

pub async fn signal_flip(cp: &ControlPlane, id: &str, signal: FlipSignal) -> Handled {
    flip::admit::signal(cp, id, signal).await?;
    let name = match signal {
        FlipSignal::Confirm => "confirm",
        FlipSignal::Cancel => "cancel",
        FlipSignal::Extend(_) => "extend",
    };
    Ok(json(
        StatusCode::ACCEPTED,
        &FlipSignalled {
            id: id.to_owned(),
            signal: name.to_owned(),
        },
    ))
}

pub async fn extend_flip(cp: &ControlPlane, id: &str, request: Request<Incoming>) -> Handled {
    let ask: ExtendRequest = json_body(request, cp.config.max_body_bytes).await?;
    if !(1..=MAX_EXTEND_S).contains(&ask.seconds) {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!(
                "body.seconds: {} is outside 1..={MAX_EXTEND_S}",
                ask.seconds
            ),
        ));
    }
    let reply = signal_flip(cp, id, FlipSignal::Extend(ask.seconds)).await?;
    Ok(with_audit_detail(reply, format!("{} s added", ask.seconds)))
}

/// The most one extension adds: a day.
pub const MAX_EXTEND_S: u64 = 86_400;

pub async fn resolve_unit(
    cp: &ControlPlane,
    actor: &str,
    unit: &str,
    request: Request<Incoming>,
) -> Handled {
    let ask: ResolveRequest = json_body(request, cp.config.max_body_bytes).await?;
    let result = units::resolve(cp, actor, unit, ask).await?;
    Ok(json(StatusCode::OK, &result))
}
