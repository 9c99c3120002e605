//! `GET /v1/table`, `GET /v1/table/versions/{n}`, `POST /v1/table/plan`, `PUT /v1/table`:
//! HTTP in and out; what a table may change is table admission's.

use control_api::{PutResult, VERSION_HEADER};
use http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;

use super::reply::{Handled, Refusal, etag, json, read_body};
use crate::ControlPlane;
use crate::admission::{self, Proposal, TableWrite};

pub async fn get_table(cp: &ControlPlane) -> Handled {
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

pub async fn get_version(cp: &ControlPlane, n: &str) -> Handled {
    let version: u64 = n.parse().map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_version",
            format!("version {n:?} is not a number"),
        )
    })?;
    match cp.store.version(version).await? {
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

pub async fn plan(cp: &ControlPlane, request: Request<Incoming>) -> Handled {
    let (body, json_body) = read_body(request, cp.config.max_body_bytes).await?;
    let proposal = Proposal {
        body,
        json: json_body,
    };
    let result = admission::plan(proposal, cp.store.current()).await?;
    Ok(json(StatusCode::OK, &result))
}

/// The version `If-Match` names.
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

pub async fn put_table(cp: &ControlPlane, actor: &str, request: Request<Incoming>) -> Handled {
    let expected = if_match(request.headers())?;
    let header_text = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    };
    let reason = header_text("x-unitgate-reason");
    let forced = header_text(control_api::FORCE_HEADER);
    let (body, json_body) = read_body(request, cp.config.max_body_bytes).await?;
    let write = TableWrite {
        proposal: Proposal {
            body,
            json: json_body,
        },
        expected,
        actor: actor.to_owned(),
        reason,
        forced,
    };
    let version = admission::write(cp, write).await?;
    let mut reply = json(StatusCode::OK, &PutResult { version });
    reply.headers_mut().insert(header::ETAG, etag(version));
    Ok(reply)
}
