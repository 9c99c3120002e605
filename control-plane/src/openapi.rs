//! The OpenAPI document served at `/v1/openapi.json`: paths from [`ENDPOINTS`] (the table the
//! router serves), schemas generated from the `control-api` types, so neither can drift from
//! the code.

use serde_json::{Value, json};

use crate::api::{ENDPOINTS, Op};
use crate::auth::Need;

fn schema<T: schemars::JsonSchema>() -> Value {
    let mut value = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
    // Component schemas are self-contained; OpenAPI 3.1 takes JSON Schema 2020-12 as is.
    if let Some(map) = value.as_object_mut() {
        map.remove("$schema");
    }
    value
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
        _ => return None,
    })
}

fn parameters(path: &str, op: Op) -> Vec<Value> {
    let mut out: Vec<Value> = path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
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
                "timeout_s",
                false,
                "integer",
                "Hold at most this long (capped by the server's watch_hold_s).",
            ));
        }
        Op::Audit => out.push(query("limit", false, "integer", "Only the last N entries.")),
        Op::PutTable => {
            out.push(json!({ "name": "If-Match", "in": "header", "required": true, "schema": { "type": "string" }, "description": "The version in force (0 for the first table)." }));
            out.push(json!({ "name": "X-Unitgate-Reason", "in": "header", "required": false, "schema": { "type": "string" }, "description": "Why: kept in the audit log." }));
        }
        _ => {}
    }
    out
}

/// The whole document.
pub fn document() -> Value {
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
            "schemas": {
                "RoutingTable": schema::<router_rules::RawTable>(),
                "StoredTable": schema::<control_api::StoredTable>(),
                "PlanResult": schema::<control_api::PlanResult>(),
                "PutResult": schema::<control_api::PutResult>(),
                "FlipRequest": schema::<control_api::FlipRequest>(),
                "FlipAccepted": schema::<control_api::FlipAccepted>(),
                "FlipRecord": schema::<control_api::FlipRecord>(),
                "GatewayReport": schema::<control_api::GatewayReport>(),
                "GatewayStatus": schema::<control_api::GatewayStatus>(),
                "Status": schema::<control_api::Status>(),
                "AuditEntry": schema::<control_api::AuditEntry>(),
                "ApiError": schema::<control_api::ApiError>(),
            },
        },
    })
}
