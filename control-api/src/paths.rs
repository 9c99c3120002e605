//! Every path of the control plane's API, as its endpoint table spells it: `{name}` stands for
//! a path parameter. The server routes on these patterns; clients fill them with [`fill`].

/// `GET`: liveness.
pub const HEALTHZ: &str = "/healthz";
/// `GET`: Prometheus metrics.
pub const METRICS: &str = "/metrics";
/// `GET`: the API's OpenAPI document.
pub const OPENAPI: &str = "/v1/openapi.json";
/// `GET`: the table in force; `PUT`: store the next version.
pub const TABLE: &str = "/v1/table";
/// `GET`: one stored version.
pub const TABLE_VERSION: &str = "/v1/table/versions/{n}";
/// `POST`: validate a proposed table and show what it changes.
pub const TABLE_PLAN: &str = "/v1/table/plan";
/// `POST`: start a flip of a unit.
pub const UNIT_FLIP: &str = "/v1/units/{unit}/flip";
/// `GET`: every flip.
pub const FLIPS: &str = "/v1/flips";
/// `GET`: one flip.
pub const FLIP: &str = "/v1/flips/{id}";
/// `POST`: confirm that a flip's data caught up.
pub const FLIP_CONFIRM: &str = "/v1/flips/{id}/confirm";
/// `POST`: wait longer for a flip's confirmation.
pub const FLIP_EXTEND: &str = "/v1/flips/{id}/extend";
/// `POST`: cancel a running flip.
pub const FLIP_CANCEL: &str = "/v1/flips/{id}/cancel";
/// `POST`: move every unit living in a region out of it, as one flip.
pub const REGION_EVACUATE: &str = "/v1/regions/{region}/evacuate";
/// `POST`: undo a region's last evacuation.
pub const REGION_RESTORE: &str = "/v1/regions/{region}/restore";
/// `POST`: settle a unit whose flip could not be recovered.
pub const UNIT_RESOLVE: &str = "/v1/units/{unit}/resolve";
/// `POST`: explain where a request would go, against the table in force.
pub const EXPLAIN: &str = "/v1/explain";
/// `GET`: every gateway seen.
pub const GATEWAYS: &str = "/v1/gateways";
/// `DELETE`: forget a gateway.
pub const GATEWAY: &str = "/v1/gateways/{id}";
/// `GET`: units and gateways in one look.
pub const STATUS: &str = "/v1/status";
/// `GET`: the audit log.
pub const AUDIT: &str = "/v1/audit";
/// `GET`: gateways' long poll for the next version.
pub const WATCH: &str = "/v1/watch";
/// `POST`: a gateway's report of what it applied or refused.
pub const REPORT: &str = "/v1/report";

/// `pattern` with its `{..}` parameters replaced, in order, by `params`, each
/// percent-encoded as one path segment ([`encode`]). A parameter without a value stays as it
/// is; values beyond the parameters are ignored (the tests below hold the patterns to their
/// parameter counts).
pub fn fill(pattern: &str, params: &[&str]) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut params = params.iter();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        out.push_str(&rest[..open]);
        match params.next() {
            Some(value) => out.push_str(&encode(value)),
            None => out.push_str(&rest[open..=close]),
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// `value` as one path segment or query value: letters, digits and `- . _ ~ : @` as they are
/// (every name the API accepts is spelled in these), every other byte as `%XX`.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Every pattern, for tests and for the server's check that it serves exactly these.
pub const ALL: &[&str] = &[
    HEALTHZ,
    METRICS,
    OPENAPI,
    TABLE,
    TABLE_VERSION,
    TABLE_PLAN,
    UNIT_FLIP,
    FLIPS,
    FLIP,
    FLIP_CONFIRM,
    FLIP_CANCEL,
    FLIP_EXTEND,
    UNIT_RESOLVE,
    REGION_EVACUATE,
    REGION_RESTORE,
    EXPLAIN,
    GATEWAYS,
    GATEWAY,
    STATUS,
    AUDIT,
    WATCH,
    REPORT,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_parameters_in_order() {
        assert_eq!(fill(TABLE_VERSION, &["7"]), "/v1/table/versions/7");
        assert_eq!(fill(UNIT_FLIP, &["u01"]), "/v1/units/u01/flip");
        assert_eq!(fill(FLIP_CONFIRM, &["f-1"]), "/v1/flips/f-1/confirm");
        assert_eq!(fill(GATEWAY, &["hz-1@a:b"]), "/v1/gateways/hz-1@a:b");
        assert_eq!(fill(STATUS, &[]), STATUS);
    }

    #[test]
    fn encodes_what_a_segment_cannot_hold() {
        assert_eq!(
            fill(FLIP, &["a/b c?d#e%"]),
            "/v1/flips/a%2Fb%20c%3Fd%23e%25"
        );
        assert_eq!(fill(FLIP, &["é"]), "/v1/flips/%C3%A9");
        assert_eq!(encode("sha256:00ff"), "sha256:00ff");
        assert_eq!(encode("a&b=c+d"), "a%26b%3Dc%2Bd");
    }

    #[test]
    fn a_missing_value_leaves_the_parameter() {
        assert_eq!(fill(FLIP_CANCEL, &[]), FLIP_CANCEL);
    }

    #[test]
    fn every_pattern_is_an_absolute_path_with_named_parameters() {
        for pattern in ALL {
            assert!(pattern.starts_with('/'), "{pattern}");
            for segment in pattern.split('/').skip(1) {
                assert!(!segment.is_empty(), "{pattern}");
                if segment.starts_with('{') {
                    assert!(segment.ends_with('}') && segment.len() > 2, "{pattern}");
                }
            }
            let params = pattern.matches('{').count();
            let values = vec!["x"; params];
            assert!(!fill(pattern, &values).contains('{'), "{pattern}");
        }
    }
}
