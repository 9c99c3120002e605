//! The OpenAPI document served at `/v1/openapi.json`: paths from [`ENDPOINTS`] (the table the
//! router serves), schemas generated from the `control-api` types, so neither can drift from
//! the code.

use serde_json::{Value, json};

use crate::api::{ENDPOINTS, Op};
use crate::auth::Need;

/// `T`'s schema as a component. schemars puts the types it refers to under the schema's own
/// `$defs` and points at them with `#/$defs/...`, which in an OpenAPI document would mean the
/// document's root: they are moved to `components/schemas` (`shared`) and the references
/// rewritten to point there.
fn schema<T: schemars::JsonSchema>(shared: &mut serde_json::Map<String, Value>) -> Value {
    let mut value = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.remove("$schema");
        if let Some(Value::Object(defs)) = map.remove("$defs") {
            for (name, mut def) in defs {
                rewrite_refs(&mut def);
                shared.entry(name).or_insert(def);
            }
        }
    }
    rewrite_refs(&mut value);
    value
}

/// Point every `#/$defs/X` reference in `value` at `#/components/schemas/X`.
fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if key == "$ref"
                    && let Value::String(target) = item
                    && let Some(name) = target.strip_prefix("#/$defs/")
                {
                    *target = format!("#/components/schemas/{name}");
                } else {
                    rewrite_refs(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn request_body(op: Op) -> Option<Value> {
    let content = match op {
        Op::Plan | Op::PutTable => json!({
            "application/json": { "schema": reference("RoutingTable") },
            "application/yaml": { "schema": reference("RoutingTable") },
        }),
        Op::StartFlip => json!({ "application/json": { "schema": reference("FlipRequest") } }),
        Op::Report => json!({ "application/json": { "schema": reference("GatewayReport") } }),
        Op::ResolveUnit => {
            json!({ "application/json": { "schema": reference("ResolveRequest") } })
        }
        _ => return None,
    };
    Some(json!({ "required": true, "content": content }))
}

fn success_schema(op: Op) -> Option<Value> {
    Some(match op {
        Op::GetTable | Op::GetVersion => reference("StoredTable"),
        Op::Plan => reference("PlanResult"),
        Op::PutTable => reference("PutResult"),
        Op::StartFlip => reference("FlipAccepted"),
        Op::ListFlips => json!({ "type": "array", "items": reference("FlipRecord") }),
        Op::GetFlip => reference("FlipRecord"),
        Op::Gateways => json!({ "type": "array", "items": reference("GatewayStatus") }),
        Op::Status => reference("Status"),
        Op::Audit => json!({ "type": "array", "items": reference("AuditEntry") }),
        Op::Watch => reference("RoutingTable"),
        Op::ResolveUnit => reference("ResolveResult"),
        _ => return None,
    })
}

fn parameters(path: &str, op: Op) -> Vec<Value> {
    let mut out: Vec<Value> = path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            // Versions are numbers; every other path parameter is a name.
            let kind = if name == "n" {
                json!({ "type": "integer", "minimum": 0 })
            } else {
                json!({ "type": "string" })
            };
            json!({ "name": name, "in": "path", "required": true, "schema": kind })
        })
        .collect();
    let query = |name: &str, required: bool, kind: &str, description: &str| json!({ "name": name, "in": "query", "required": required, "schema": { "type": kind }, "description": description });
    match op {
        Op::Watch => {
            out.push(query(
                "after",
                true,
                "integer",
                "The newest version the gateway has seen.",
            ));
            out.push(query("gateway", true, "string", "The gateway's id."));
            out.push(query("region", true, "string", "The gateway's region."));
            out.push(query(
                "applied",
                false,
                "integer",
                "The version it serves (default: after).",
            ));
            out.push(query(
                "digest",
                false,
                "string",
                "The digest of the table it serves (sha256:<64 hex digits>).",
            ));
            out.push(query(
                "timeout_s",
                false,
                "integer",
                "Hold at most this long (capped by the server's watch_hold_s).",
            ));
        }
        Op::Audit => out.push(json!({ "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 0 }, "description": "Only the last N entries." })),
        Op::PutTable => {
            out.push(json!({ "name": "If-Match", "in": "header", "required": true, "schema": { "type": "string" }, "description": "The version in force (0 for the first table)." }));
            out.push(json!({ "name": "X-Unitgate-Reason", "in": "header", "required": false, "schema": { "type": "string" }, "description": "Why: kept in the audit log." }));
            out.push(json!({ "name": "X-Unitgate-Force", "in": "header", "required": false, "schema": { "type": "string", "minLength": 1 }, "description": "Admins: store a table that moves units without a flip; the reason, kept on the version and in the audit log." }));
        }
        _ => {}
    }
    out
}

/// The whole document.
pub fn document() -> Value {
    let mut schemas = serde_json::Map::new();
    let components = [
        (
            "RoutingTable",
            schema::<router_rules::RawTable>(&mut schemas),
        ),
        (
            "StoredTable",
            schema::<control_api::StoredTable>(&mut schemas),
        ),
        (
            "PlanResult",
            schema::<control_api::PlanResult>(&mut schemas),
        ),
        ("PutResult", schema::<control_api::PutResult>(&mut schemas)),
        (
            "FlipRequest",
            schema::<control_api::FlipRequest>(&mut schemas),
        ),
        (
            "FlipAccepted",
            schema::<control_api::FlipAccepted>(&mut schemas),
        ),
        (
            "FlipRecord",
            schema::<control_api::FlipRecord>(&mut schemas),
        ),
        (
            "GatewayReport",
            schema::<control_api::GatewayReport>(&mut schemas),
        ),
        (
            "GatewayStatus",
            schema::<control_api::GatewayStatus>(&mut schemas),
        ),
        ("Status", schema::<control_api::Status>(&mut schemas)),
        (
            "AuditEntry",
            schema::<control_api::AuditEntry>(&mut schemas),
        ),
        ("ApiError", schema::<control_api::ApiError>(&mut schemas)),
        (
            "ResolveRequest",
            schema::<control_api::ResolveRequest>(&mut schemas),
        ),
        (
            "ResolveResult",
            schema::<control_api::ResolveResult>(&mut schemas),
        ),
    ];
    for (name, value) in components {
        schemas.insert(name.to_owned(), value);
    }
    let mut paths = serde_json::Map::new();
    for endpoint in ENDPOINTS {
        let mut responses = serde_json::Map::new();
        let mut statuses: Vec<u16> = endpoint.statuses.to_vec();
        if endpoint.need != Need::Nothing {
            statuses.extend([401, 403]);
        }
        for status in statuses {
            let body = if status >= 400 {
                json!({ "description": "Error", "content": { "application/json": { "schema": reference("ApiError") } } })
            } else if let (true, Some(schema)) =
                (status < 300 && status != 204, success_schema(endpoint.op))
            {
                json!({ "description": "OK", "content": { "application/json": { "schema": schema } } })
            } else {
                json!({ "description": "OK" })
            };
            responses.insert(status.to_string(), body);
        }
        let mut operation = json!({
            "summary": endpoint.summary,
            "operationId": format!("{:?}", endpoint.op),
            "parameters": parameters(endpoint.path, endpoint.op),
            "responses": responses,
            "x-required-role": endpoint.need.roles(),
        });
        if endpoint.need == Need::Nothing {
            operation["security"] = json!([]);
        }
        if let Some(body) = request_body(endpoint.op) {
            operation["requestBody"] = body;
        }
        let item = paths
            .entry(endpoint.path.to_owned())
            .or_insert_with(|| json!({}));
        item[endpoint.method.as_str().to_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "unitgate control plane",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Versioned routing tables, unit flips and push to gateways. Every endpoint but /healthz needs Authorization: Bearer <token>; each token has a role (viewer, operator, admin, gateway).",
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
        match value {
            Value::Object(map) => {
                for (key, item) in map {
                    match (key.as_str(), item) {
                        ("$ref", Value::String(target)) => out.push(target),
                        _ => refs(item, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| refs(i, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves_in_the_document() {
        let document = document();
        let mut found = Vec::new();
        refs(&document, &mut found);
        assert!(found.len() > 20, "{}", found.len());
        for target in found {
            let pointer = target
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("not a local reference: {target}"));
            assert!(
                document.pointer(pointer).is_some(),
                "{target} does not resolve"
            );
        }
        assert!(document.pointer("/components/schemas/UnitState").is_some());
    }
}
