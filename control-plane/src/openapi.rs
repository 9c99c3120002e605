//! The OpenAPI document served at `/v1/openapi.json`: paths from [`ENDPOINTS`] (the table the
//! router serves), schemas generated from the `control-api` types, so neither can drift from
//! the code.

use serde_json::{Value, json};

use crate::api::endpoints::{ENDPOINTS, Op};
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

/// A text the server trims and refuses when nothing is left (a reason, a force header): at
/// least one character that is not whitespace. The class is Rust's `char::is_whitespace`,
/// spelled out, so that the document and `str::trim` agree on what "blank" is.
const NOT_BLANK: &str =
    "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

/// A gateway id or region, as the watch and the report check them.
const NAME: &str = "^[A-Za-z0-9._:@-]{1,128}$";

/// A table digest: `sha256:` and 64 hex digits.
const DIGEST: &str = "^sha256:[0-9a-fA-F]{64}$";

/// `If-Match` of `PUT /v1/table`: the version in force, bare or as the `ETag` the server
/// sends (`"7"`), weak or not. At most 19 digits, so that every match fits in 64 bits.
const IF_MATCH: &str = "^([0-9]{1,19}|(W/)?\"[0-9]{1,19}\")$";

/// A table version (or any other 64-bit count) as the server parses it.
fn uint64() -> Value {
    json!({ "type": "integer", "format": "uint64", "minimum": 0, "maximum": u64::MAX })
}

/// The range of each integer `format` schemars writes for Rust's integer types.
fn integer_range(format: &str) -> Option<(i128, i128)> {
    Some(match format {
        "uint8" => (0, u8::MAX.into()),
        "uint16" => (0, u16::MAX.into()),
        "uint32" => (0, u32::MAX.into()),
        "uint64" | "uint" => (0, u64::MAX.into()),
        "int8" => (i8::MIN.into(), i8::MAX.into()),
        "int16" => (i16::MIN.into(), i16::MAX.into()),
        "int32" => (i32::MIN.into(), i32::MAX.into()),
        "int64" | "int" => (i64::MIN.into(), i64::MAX.into()),
        _ => return None,
    })
}

/// Give every integer with a Rust `format` the bounds its type has: a number past them is
/// refused (400) like any other malformed value, so the document says where they are.
fn bound_integers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some((low, high)) = map
                .get("format")
                .and_then(Value::as_str)
                .and_then(integer_range)
            {
                for (key, bound) in [("minimum", low), ("maximum", high)] {
                    if !map.contains_key(key) {
                        let bound = serde_json::Number::from_i128(bound).map(Value::Number);
                        if let Some(bound) = bound {
                            map.insert(key.to_owned(), bound);
                        }
                    }
                }
            }
            map.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// What the handlers check of a body beyond its types, said in the schema so that a request
/// the document calls valid is one the server takes: (component, property, keyword, value).
fn body_constraints() -> [(&'static str, &'static str, &'static str, Value); 15] {
    [
        ("ExplainRequest", "path", "pattern", json!("^/")),
        ("ExtendRequest", "seconds", "minimum", json!(1)),
        ("ExtendRequest", "seconds", "maximum", json!(86_400)),
        ("FlipRequest", "reason", "pattern", json!(NOT_BLANK)),
        ("FlipRequest", "converge_timeout_s", "minimum", json!(1)),
        ("MultiFlipRequest", "reason", "pattern", json!(NOT_BLANK)),
        (
            "MultiFlipRequest",
            "converge_timeout_s",
            "minimum",
            json!(1),
        ),
        ("EvacuateRequest", "reason", "pattern", json!(NOT_BLANK)),
        ("EvacuateRequest", "converge_timeout_s", "minimum", json!(1)),
        ("RestoreRequest", "reason", "pattern", json!(NOT_BLANK)),
        ("RestoreRequest", "converge_timeout_s", "minimum", json!(1)),
        ("ResolveRequest", "reason", "pattern", json!(NOT_BLANK)),
        ("GatewayReport", "gateway", "pattern", json!(NAME)),
        ("GatewayReport", "region", "pattern", json!(NAME)),
        ("GatewayReport", "digest", "pattern", json!(DIGEST)),
    ]
}

fn constrain(schemas: &mut serde_json::Map<String, Value>) {
    for (component, property, keyword, value) in body_constraints() {
        if let Some(Value::Object(schema)) = schemas
            .get_mut(component)
            .and_then(|c| c.get_mut("properties"))
            .and_then(|p| p.get_mut(property))
        {
            schema.insert(keyword.to_owned(), value);
        }
    }
}

fn request_body(op: Op) -> Option<Value> {
    let content = match op {
        // A plan takes any text and says what is wrong with it: a body that is no table at
        // all is answered 200 with `valid: false` and its problems, like an invalid table.
        Op::Plan => {
            let proposed = json!({
                "description": "The proposed table (RoutingTable). Any other document is answered 200 with valid: false and its problems.",
                "anyOf": [reference("RoutingTable"), {}],
            });
            json!({
                "application/json": { "schema": proposed },
                "application/yaml": { "schema": proposed },
            })
        }
        Op::PutTable => json!({
            "application/json": { "schema": reference("RoutingTable") },
            "application/yaml": { "schema": reference("RoutingTable") },
        }),
        Op::StartFlip => json!({ "application/json": { "schema": reference("FlipRequest") } }),
        Op::StartFlips => {
            json!({ "application/json": { "schema": reference("MultiFlipRequest") } })
        }
        Op::Evacuate => json!({ "application/json": { "schema": reference("EvacuateRequest") } }),
        Op::Restore => json!({ "application/json": { "schema": reference("RestoreRequest") } }),
        Op::ExtendFlip => json!({ "application/json": { "schema": reference("ExtendRequest") } }),
        Op::Explain => json!({ "application/json": { "schema": reference("ExplainRequest") } }),
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
        Op::StartFlip | Op::StartFlips | Op::Evacuate | Op::Restore => reference("FlipAccepted"),
        Op::ListFlips => json!({ "type": "array", "items": reference("FlipRecord") }),
        Op::GetFlip => reference("FlipRecord"),
        Op::Gateways => json!({ "type": "array", "items": reference("GatewayStatus") }),
        Op::Status => reference("Status"),
        Op::Audit => json!({ "type": "array", "items": reference("AuditEntry") }),
        Op::Watch => reference("RoutingTable"),
        Op::ResolveUnit => reference("ResolveResult"),
        Op::Explain => reference("ExplainResult"),
        _ => return None,
    })
}

/// Where a success answer leads: the operations that take what it returns (OpenAPI links, so
/// that clients and API fuzzers can follow a flip or a stored version).
fn links(op: Op) -> Option<Value> {
    let to = |target: Op, parameter: &str, value: &str, description: &str| {
        json!({
            "operationId": format!("{target:?}"),
            "parameters": { parameter: value },
            "description": description,
        })
    };
    Some(match op {
        Op::StartFlip | Op::StartFlips | Op::Evacuate | Op::Restore => json!({
            "GetFlip": to(Op::GetFlip, "id", "$response.body#/id", "The flip's record."),
            "ConfirmFlip": to(Op::ConfirmFlip, "id", "$response.body#/id", "Confirm its data caught up."),
            "CancelFlip": to(Op::CancelFlip, "id", "$response.body#/id", "Roll it back."),
        }),
        Op::PutTable => json!({
            "GetVersion": to(Op::GetVersion, "n", "$response.body#/version", "The version stored."),
        }),
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
                uint64()
            } else {
                json!({ "type": "string" })
            };
            json!({ "name": name, "in": "path", "required": true, "schema": kind })
        })
        .collect();
    let query = |name: &str, required: bool, schema: Value, description: &str| json!({ "name": name, "in": "query", "required": required, "schema": schema, "description": description });
    let text = |pattern: &str| json!({ "type": "string", "pattern": pattern });
    match op {
        Op::Watch => {
            out.push(query(
                "after",
                true,
                uint64(),
                "The newest version the gateway has seen.",
            ));
            out.push(query("gateway", true, text(NAME), "The gateway's id."));
            out.push(query("region", true, text(NAME), "The gateway's region."));
            out.push(query(
                "applied",
                false,
                uint64(),
                "The version it serves (default: after).",
            ));
            out.push(query(
                "digest",
                false,
                text(DIGEST),
                "The digest of the table it serves (sha256:<64 hex digits>).",
            ));
            out.push(query(
                "timeout_s",
                false,
                uint64(),
                "Hold at most this long (capped by the server's watch_hold_s).",
            ));
        }
        Op::Audit => out.push(query(
            "limit",
            false,
            uint64(),
            "Only the last N entries (a negative or non-numeric limit is 400).",
        )),
        Op::PutTable => {
            out.push(json!({ "name": "If-Match", "in": "header", "required": true, "schema": text(IF_MATCH), "description": "The version in force (0 for the first table), bare (7) or as the ETag of GET /v1/table (\"7\"). Missing: 428; empty or not a version: 400; another version: 409." }));
            out.push(json!({ "name": "X-Unitgate-Reason", "in": "header", "required": false, "schema": { "type": "string" }, "description": "Why: kept in the audit log." }));
            out.push(json!({ "name": "X-Unitgate-Force", "in": "header", "required": false, "schema": text(NOT_BLANK), "description": "Admins: store a table that moves units without a flip; the reason, kept on the version and in the audit log. Blank: 400." }));
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
            "MultiFlipRequest",
            schema::<control_api::MultiFlipRequest>(&mut schemas),
        ),
        (
            "EvacuateRequest",
            schema::<control_api::EvacuateRequest>(&mut schemas),
        ),
        (
            "RestoreRequest",
            schema::<control_api::RestoreRequest>(&mut schemas),
        ),
        (
            "ExtendRequest",
            schema::<control_api::ExtendRequest>(&mut schemas),
        ),
        (
            "ExplainRequest",
            schema::<control_api::ExplainRequest>(&mut schemas),
        ),
        (
            "ExplainResult",
            schema::<control_api::ExplainResult>(&mut schemas),
        ),
        (
            "ResolveResult",
            schema::<control_api::ResolveResult>(&mut schemas),
        ),
    ];
    for (name, value) in components {
        schemas.insert(name.to_owned(), value);
    }
    constrain(&mut schemas);
    schemas.values_mut().for_each(bound_integers);
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
                let mut body = json!({ "description": "OK", "content": { "application/json": { "schema": schema } } });
                if let Some(links) = links(endpoint.op) {
                    body["links"] = links;
                }
                body
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

    #[test]
    fn body_rules_the_handlers_check_are_in_the_schemas() {
        let document = document();
        for (component, property, keyword, value) in body_constraints() {
            let at = format!("/components/schemas/{component}/properties/{property}/{keyword}");
            assert_eq!(document.pointer(&at), Some(&value), "{at}");
        }
    }

    #[test]
    fn numbers_and_headers_the_server_refuses_are_documented() {
        let document = document();
        let operation = |path: &str, method: &str| {
            document["paths"][path][method]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path}"))
                .clone()
        };
        let parameter = |path: &str, method: &str, name: &str| {
            operation(path, method)["parameters"]
                .as_array()
                .and_then(|all| all.iter().find(|p| p["name"] == name).cloned())
                .unwrap_or_else(|| panic!("{method} {path}: no parameter {name}"))
        };
        // ?limit=-1 is out of the documented range, and answered 400, which is listed.
        let limit = parameter("/v1/audit", "get", "limit");
        assert_eq!(limit["schema"]["type"], "integer");
        assert_eq!(limit["schema"]["minimum"], 0);
        assert!(
            operation("/v1/audit", "get")["responses"]
                .get("400")
                .is_some()
        );
        // Versions are integers, up to what 64 bits hold.
        let n = parameter("/v1/table/versions/{n}", "get", "n");
        assert_eq!(n["schema"]["type"], "integer");
        assert_eq!(n["schema"]["maximum"], u64::MAX);
        // An empty If-Match is outside its pattern and answered 400; a missing one is 428.
        let if_match = parameter("/v1/table", "put", "If-Match");
        let pattern = if_match["schema"]["pattern"].as_str().expect("a pattern");
        assert_eq!(pattern, IF_MATCH);
        let put = operation("/v1/table", "put");
        for status in ["400", "428"] {
            assert!(put["responses"].get(status).is_some(), "{status}");
        }
        // A plan needs a body (an empty one is 400).
        let plan = operation("/v1/table/plan", "post");
        assert_eq!(plan["requestBody"]["required"], true);
        assert!(plan["responses"].get("400").is_some());
        // Every Rust integer carries its range.
        let converge = document
            .pointer("/components/schemas/FlipRequest/properties/converge_timeout_s")
            .expect("converge_timeout_s");
        assert_eq!(converge["minimum"], 1);
        assert_eq!(converge["maximum"], u64::MAX);
    }
}
