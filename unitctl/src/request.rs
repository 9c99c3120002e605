//! The request `unitctl route` resolves, one or a batch of them: the region it enters and
//! where its routing key goes.

use base64::Engine as _;
use router_rules::table::RegionIndex;
use router_rules::{Class, CompiledTable, KeySource, SimpleRequest};

use crate::Failure;

/// The index of region `name`, or the center unit's region.
pub fn entry_region(table: &CompiledTable, name: Option<&str>) -> Result<RegionIndex, Failure> {
    match name {
        None => Ok(table.center_unit().region),
        Some(name) => table.region_index(name).ok_or_else(|| {
            let known: Vec<&str> = table.regions().iter().map(|r| &*r.name).collect();
            Failure::input(format!(
                "unknown region {name:?} (--region); regions in the table: {}",
                known.join(", ")
            ))
        }),
    }
}

/// Put `user` where the matched route looks for its key first, unless some key source of the
/// route already finds one.
pub fn place_key(
    table: &CompiledTable,
    request: &mut SimpleRequest,
    user: &str,
    notes: &mut Vec<String>,
) -> Result<(), Failure> {
    let Some(route) = table.match_route(request) else {
        notes.push("--user not used: no route matches the request".to_owned());
        return Ok(());
    };
    if route.class != Class::C {
        notes.push(format!(
            "--user not used: route {} is P-class (not routed by key)",
            route.name
        ));
        return Ok(());
    }
    if let Some(source) = route
        .key_sources
        .iter()
        .find(|s| !matches!(s.extract(request), Ok(None)))
    {
        notes.push(format!(
            "--user not used: the request already carries a key in {source}"
        ));
        return Ok(());
    }
    let Some(first) = route.key_sources.first() else {
        return Ok(());
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
                return Err(Failure::input(format!(
                    "route {} takes its key from path segment {n}, but --path {} has only {} segments; give a longer --path",
                    route.name,
                    request.path,
                    segments.len()
                )));
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
    Ok(())
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
