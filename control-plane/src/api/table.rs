//! `GET /v1/table`, `GET /v1/table/versions/{n}`, `POST /v1/table/plan`, `PUT /v1/table`:
//! HTTP in and out; what a table may change is table admission's.

use control_api::{PutResult, VERSION_HEADER};
use http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;

use super::reply::{Handled, Refusal, etag, header_text, json, read_body};
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
    let result = admission::plan(cp, proposal).await?;
    Ok(json(StatusCode::OK, &result))
}

/// The version `If-Match` names: `N`, `"N"` (the ETag this API sends) or `W/"N"`.
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
        .and_then(version_of_etag)
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_if_match",
                format!(
                    "If-Match: {value:?} is not a version: send N, \"N\" or W/\"N\" (the ETag of GET /v1/table)"
                ),
            )
        })
}

fn version_of_etag(value: &str) -> Option<u64> {
    let value = value.trim();
    let digits = match value.strip_prefix("W/").unwrap_or(value) {
        quoted if quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"') => {
            &quoted[1..quoted.len() - 1]
        }
        _ if value.starts_with("W/") => return None,
        bare => bare,
    };
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub async fn put_table(cp: &ControlPlane, actor: &str, request: Request<Incoming>) -> Handled {
    let expected = if_match(request.headers())?;
    let reason = header_text(request.headers(), control_api::REASON_HEADER)?;
    let forced = header_text(request.headers(), control_api::FORCE_HEADER)?;
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

#[cfg(test)]
mod tests {
    use super::version_of_etag;

    #[test]
    fn if_match_takes_a_version_bare_quoted_or_weak() {
        for (text, version) in [("3", 3), ("\"3\"", 3), ("W/\"3\"", 3), (" 0 ", 0)] {
            assert_eq!(version_of_etag(text), Some(version), "{text}");
        }
        for text in [
            "",
            "+2",
            "W/W/\"\"3",
            "W/3",
            "\"3",
            "3\"",
            "\"\"",
            "*",
            "1e3",
            "99999999999999999999",
        ] {
            assert_eq!(version_of_etag(text), None, "{text}");
        }
    }
}
