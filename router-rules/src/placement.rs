//! Putting a user's routing key into a request, where the route it matches looks for it first:
//! how `unitctl route --user` and the control plane's `POST /v1/explain` turn "user 4321" into
//! the request a gateway would see.

use base64::Engine as _;

use crate::key::KeySource;
use crate::raw::Class;
use crate::request::SimpleRequest;
use crate::table::CompiledTable;

/// What became of the user's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPlacement {
    /// Put where the route looks first.
    Placed,
    /// Not put anywhere, and why (no route, a P-class route, a key already in the request).
    NotUsed(String),
}

/// Put `user` where the route `request` matches looks for its key first, unless some key
/// source of the route already finds one. An error when the route takes its key from a path
/// segment the request's path is too short to have.
pub fn place_key(
    table: &CompiledTable,
    request: &mut SimpleRequest,
    user: &str,
) -> Result<KeyPlacement, String> {
    let Some(route) = table.match_route(request) else {
        return Ok(KeyPlacement::NotUsed("no route matches the request".into()));
    };
    if route.class != Class::C {
        return Ok(KeyPlacement::NotUsed(format!(
            "route {} is P-class (not routed by key)",
            route.name
        )));
    }
    if let Some(source) = route
        .key_sources
        .iter()
        .find(|s| !matches!(s.extract(request), Ok(None)))
    {
        return Ok(KeyPlacement::NotUsed(format!(
            "the request already carries a key in {source}"
        )));
    }
    let Some(first) = route.key_sources.first() else {
        return Ok(KeyPlacement::NotUsed(format!(
            "route {} names no key source",
            route.name
        )));
    };
    match first {
        KeySource::Header(name) => request.add_header(name, user),
        KeySource::Cookie(name) => request.add_cookie(name, user),
        KeySource::Query(name) => request.add_query(name, &percent_encode(user)),
        KeySource::PathSegment(n) => {
            let mut segments: Vec<&str> =
                request.path.split('/').filter(|s| !s.is_empty()).collect();
            let index = *n as usize - 1;
            let encoded = percent_encode(user);
            if index < segments.len() {
                segments[index] = &encoded;
            } else if index == segments.len() {
                segments.push(&encoded);
            } else {
                return Err(format!(
                    "route {} takes its key from path segment {n}, but the path {} has only {} segments; give a longer path",
                    route.name,
                    request.path,
                    segments.len()
                ));
            }
            request.path = format!("/{}", segments.join("/"));
        }
        KeySource::JwtClaim(claim) => {
            let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let payload = serde_json::json!({ claim.as_ref(): user }).to_string();
            let token = format!(
                "{}.{}.",
                engine.encode(r#"{"alg":"none","typ":"JWT"}"#),
                engine.encode(payload)
            );
            request.add_header("authorization", &format!("Bearer {token}"));
        }
    }
    Ok(KeyPlacement::Placed)
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
