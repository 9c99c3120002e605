//! The gateways' side of the API: `GET /v1/watch` (long poll for the next version),
//! `POST /v1/report`, and the operators' `GET /v1/gateways`, `DELETE /v1/gateways/{id}`.
//! A gateway's token binds it to a region and to ids; what it says of itself is checked
//! against that and against the store before it is recorded.

use std::sync::atomic::Ordering;
use std::time::Duration;

use control_api::{DIGEST_HEADER, GatewayReport, StoredTable, VERSION_HEADER};
use http::{HeaderValue, Request, StatusCode};
use hyper::body::Incoming;

use super::reply::{Handled, Refusal, Reply, empty, is_digest, is_name, json, json_body, query};
use crate::auth::Principal;
use crate::registry::Sighting;
use crate::{AppliedCheck, ControlPlane};

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
    let diverged = match cp.check_applied(applied, digest.as_deref()).await? {
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

pub async fn watch(
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
    let name = |name: &str| -> Result<String, Refusal> {
        let value = query(query_string, name)
            .ok_or_else(|| bad(format!("missing query parameter {name}")))?;
        if is_name(&value) {
            Ok(value.into_owned())
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
        Some(d) if is_digest(&d) => Some(d.into_owned()),
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
    let sighting = admit_gateway(cp, principal, &gateway, &region, applied, digest).await?;
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

pub async fn report(
    cp: &ControlPlane,
    principal: Option<&Principal>,
    request: Request<Incoming>,
) -> Handled {
    let report: GatewayReport = json_body(request, cp.config.max_body_bytes).await?;
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
    if report.leaving {
        // Admitted above: the token speaks for this gateway.
        if cp.registry.forget(&report.gateway) {
            cp.store
                .forget_gateway(&report.gateway, &cp.registry)
                .await?;
        }
        cp.audit(control_api::AuditEntry {
            at_ms: control_api::now_ms(),
            actor: principal.map_or_else(String::new, |p| p.name.clone()),
            action: "gateway.leave".into(),
            target: report.gateway.clone(),
            outcome: control_api::AuditOutcome::Ok,
            status: Some(204),
            version_before: Some(report.applied),
            version_after: None,
            reason: Some("the gateway stopped".into()),
            flip: None,
            detail: None,
        })
        .await;
        return Ok(empty(StatusCode::NO_CONTENT));
    }
    cp.gateway_seen(sighting).await;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub fn list_gateways(cp: &ControlPlane) -> Handled {
    Ok(json(StatusCode::OK, &cp.registry.list()))
}

pub async fn forget_gateway(cp: &ControlPlane, id: &str) -> Handled {
    if !cp.registry.forget(id) {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "unknown_gateway",
            format!("no gateway {id:?} in the fleet"),
        ));
    }
    cp.store.forget_gateway(id, &cp.registry).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}
