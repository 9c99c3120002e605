//! The API's endpoints: one table ([`ENDPOINTS`]) that the router, the authorisation check,
//! the OpenAPI document and the tests all read.

use control_api::paths;
use http::Method;

use crate::auth::Need;

/// What an endpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /v1/openapi.json`.
    OpenApi,
    /// `GET /v1/table`.
    GetTable,
    /// `GET /v1/table/versions/{n}`.
    GetVersion,
    /// `POST /v1/table/plan`.
    Plan,
    /// `PUT /v1/table`.
    PutTable,
    /// `POST /v1/units/{unit}/flip`.
    StartFlip,
    /// `GET /v1/flips`.
    ListFlips,
    /// `GET /v1/flips/{id}`.
    GetFlip,
    /// `POST /v1/flips/{id}/confirm`.
    ConfirmFlip,
    /// `POST /v1/flips/{id}/cancel`.
    CancelFlip,
    /// `GET /v1/gateways`.
    Gateways,
    /// `GET /v1/status`.
    Status,
    /// `GET /v1/audit`.
    Audit,
    /// `GET /v1/watch`.
    Watch,
    /// `POST /v1/report`.
    Report,
    /// `POST /v1/units/{unit}/resolve`.
    ResolveUnit,
    /// `POST /v1/flips`.
    StartFlips,
    /// `POST /v1/explain`.
    Explain,
    /// `POST /v1/flips/{id}/extend`.
    ExtendFlip,
    /// `POST /v1/regions/{region}/evacuate`.
    Evacuate,
    /// `POST /v1/regions/{region}/restore`.
    Restore,
    /// `DELETE /v1/gateways/{id}`.
    ForgetGateway,
}

/// One endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Method.
    pub method: Method,
    /// Path, with `{name}` for a path parameter.
    pub path: &'static str,
    /// Who may call it.
    pub need: Need,
    /// What it does.
    pub op: Op,
    /// One line for the API document.
    pub summary: &'static str,
    /// Statuses it answers besides 401/403 (for the API document and its test).
    pub statuses: &'static [u16],
}

const fn endpoint(
    method: Method,
    path: &'static str,
    need: Need,
    op: Op,
    summary: &'static str,
    statuses: &'static [u16],
) -> Endpoint {
    Endpoint {
        method,
        path,
        need,
        op,
        summary,
        statuses,
    }
}

/// Every endpoint of the API.
pub const ENDPOINTS: &[Endpoint] = &[
    endpoint(
        Method::GET,
        paths::HEALTHZ,
        Need::Nothing,
        Op::Health,
        "Liveness: the process answers.",
        &[200],
    ),
    endpoint(
        Method::GET,
        paths::METRICS,
        Need::Read,
        Op::Metrics,
        "Prometheus metrics.",
        &[200],
    ),
    endpoint(
        Method::GET,
        paths::OPENAPI,
        Need::Read,
        Op::OpenApi,
        "This API's OpenAPI document.",
        &[200],
    ),
    endpoint(
        Method::GET,
        paths::TABLE,
        Need::Read,
        Op::GetTable,
        "The table in force, with its version.",
        &[200, 404],
    ),
    endpoint(
        Method::GET,
        paths::TABLE_VERSION,
        Need::Read,
        Op::GetVersion,
        "One stored version.",
        &[200, 400, 404],
    ),
    endpoint(
        Method::POST,
        paths::TABLE_PLAN,
        Need::Operate,
        Op::Plan,
        "Validate a proposed table (YAML or JSON) and show what it changes; stores nothing.",
        &[200, 400, 413, 415],
    ),
    endpoint(
        Method::PUT,
        paths::TABLE,
        Need::Admin,
        Op::PutTable,
        "Store a table as the next version (If-Match: the version in force) and push it. A table that moves units to other regions or slots is refused (422) unless an admin forces it with X-Unitgate-Force: <reason>; flips move units.",
        &[200, 400, 409, 413, 422, 428, 503],
    ),
    endpoint(
        Method::POST,
        paths::UNIT_FLIP,
        Need::Operate,
        Op::StartFlip,
        "Start a planned or emergency flip of a unit.",
        &[202, 400, 404, 409, 413, 422, 503],
    ),
    endpoint(
        Method::GET,
        paths::FLIPS,
        Need::Read,
        Op::ListFlips,
        "Every flip, oldest first.",
        &[200, 503],
    ),
    endpoint(
        Method::POST,
        paths::FLIPS,
        Need::Operate,
        Op::StartFlips,
        "Start one flip of several units: each step is one version for all of them; a failed step rolls every unit back.",
        &[202, 400, 404, 409, 413, 422, 503],
    ),
    endpoint(
        Method::POST,
        paths::REGION_EVACUATE,
        Need::Operate,
        Op::Evacuate,
        "Move every unit living in a region out of it (to each unit's standby, or to `to`), as one flip.",
        &[202, 400, 404, 409, 413, 422, 503],
    ),
    endpoint(
        Method::POST,
        paths::REGION_RESTORE,
        Need::Operate,
        Op::Restore,
        "Move back, as one planned flip, the units the region's last evacuation moved.",
        &[202, 400, 409, 413, 422, 503],
    ),
    endpoint(
        Method::GET,
        paths::FLIP,
        Need::Read,
        Op::GetFlip,
        "A flip's steps, timestamps and outcomes.",
        &[200, 404, 503],
    ),
    endpoint(
        Method::POST,
        paths::FLIP_CONFIRM,
        Need::Operate,
        Op::ConfirmFlip,
        "Confirm that the data caught up (flips waiting for confirmation).",
        &[202, 404, 409, 503],
    ),
    endpoint(
        Method::POST,
        paths::FLIP_EXTEND,
        Need::Operate,
        Op::ExtendFlip,
        "Wait longer for a confirmation (flips waiting for one): adds `seconds` to its deadline.",
        &[202, 400, 404, 409, 413, 422, 503],
    ),
    endpoint(
        Method::POST,
        paths::FLIP_CANCEL,
        Need::Operate,
        Op::CancelFlip,
        "Cancel a running flip: it rolls back.",
        &[202, 404, 409, 503],
    ),
    endpoint(
        Method::POST,
        paths::UNIT_RESOLVE,
        Need::Operate,
        Op::ResolveUnit,
        "Settle a unit whose flip could not be recovered: set its state in the region it is in, and lift its lock.",
        &[200, 400, 404, 409, 413, 422, 503],
    ),
    endpoint(
        Method::POST,
        paths::EXPLAIN,
        Need::Read,
        Op::Explain,
        "Where a request (method, path, headers, a user's key, the region it enters) would go, against the table in force; changes nothing.",
        &[200, 400, 404, 409, 413, 422],
    ),
    endpoint(
        Method::GET,
        paths::GATEWAYS,
        Need::Read,
        Op::Gateways,
        "Every gateway seen, with the version it serves.",
        &[200],
    ),
    endpoint(
        Method::DELETE,
        paths::GATEWAY,
        Need::Operate,
        Op::ForgetGateway,
        "Forget a gateway taken out of service, so that flips stop waiting for it.",
        &[204, 404, 503],
    ),
    endpoint(
        Method::GET,
        paths::STATUS,
        Need::Read,
        Op::Status,
        "Units (region, state, running flip) and gateways in one look.",
        &[200],
    ),
    endpoint(
        Method::GET,
        paths::AUDIT,
        Need::Read,
        Op::Audit,
        "The audit log, oldest first (?limit=N: the last N).",
        &[200, 400, 503],
    ),
    endpoint(
        Method::GET,
        paths::WATCH,
        Need::Gateway,
        Op::Watch,
        "Gateways: long-poll for the next version after ?after=N (200 with the table, or 204 when none came within the hold time). A gateway serving other content than the stored version it names gets the stored one at once.",
        &[200, 204, 400, 422],
    ),
    endpoint(
        Method::POST,
        paths::REPORT,
        Need::Gateway,
        Op::Report,
        "Gateways: report the version served and any refused one.",
        &[204, 400, 413, 422],
    ),
];

/// Path parameters, in the order the pattern names them.
pub fn match_path<'p>(pattern: &str, path: &'p str) -> Option<Vec<&'p str>> {
    let mut params = Vec::new();
    let mut pattern_parts = pattern.split('/');
    let mut path_parts = path.split('/');
    loop {
        match (pattern_parts.next(), path_parts.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(s)) if p.starts_with('{') && !s.is_empty() => params.push(s),
            (Some(p), Some(s)) if p == s => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_with_parameters() {
        assert_eq!(
            match_path("/v1/flips/{id}", "/v1/flips/f1"),
            Some(vec!["f1"])
        );
        assert_eq!(match_path("/v1/flips/{id}", "/v1/flips/"), None);
        assert_eq!(match_path("/v1/flips/{id}", "/v1/flips/a/b"), None);
        assert_eq!(
            match_path("/v1/units/{unit}/flip", "/v1/units/u01/flip"),
            Some(vec!["u01"])
        );
        assert_eq!(match_path("/v1/table", "/v1/table/"), None);
    }

    #[test]
    fn the_server_serves_exactly_the_paths_clients_use() {
        let mut served: Vec<&str> = ENDPOINTS.iter().map(|e| e.path).collect();
        served.sort_unstable();
        served.dedup();
        let mut shared: Vec<&str> = paths::ALL.to_vec();
        shared.sort_unstable();
        assert_eq!(served, shared);
    }

    #[test]
    fn every_endpoint_is_reachable_and_unique() {
        for (i, a) in ENDPOINTS.iter().enumerate() {
            for b in &ENDPOINTS[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {} twice",
                    a.method,
                    a.path
                );
            }
        }
    }
}
