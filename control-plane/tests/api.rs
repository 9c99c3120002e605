//! The API as a client meets it: authentication and roles on every endpoint, the OpenAPI
//! document against the real answers, and bad input, against a real `unitgate-control`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use control_api::{ApiError, Client, ClientError, PutTable, TableText, paths};
use control_plane::api::ENDPOINTS;
use control_plane::auth::{Need, Role};
use http::{Method, StatusCode};
use support::{ControlProcess, Tokens, file_plane_config, file_store};

const T: Duration = Duration::from_secs(10);

/// A request each endpoint can take without side effects that outlast the test.
fn sample(method: &Method, path: &str) -> (String, Option<(bytes::Bytes, &'static str)>) {
    let path = path
        .replace("{n}", "1")
        .replace("{unit}", "u01")
        .replace("{id}", "f0-none")
        .replace("{region}", "hz");
    let path = if path == paths::WATCH {
        format!("{path}?after=0&gateway=hz-matrix&region=hz&timeout_s=0")
    } else {
        path
    };
    let body =
        (method != Method::GET).then(|| (bytes::Bytes::from_static(b"{}"), "application/json"));
    (path, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_answers_every_role_as_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let config = file_plane_config(dir.path(), &tokens);
    let cp = ControlProcess::start(&config);
    let anonymous = Client::new(&cp.url, None, None).expect("client");
    let callers: Vec<(&str, Option<Role>, Client)> = vec![
        ("no token", None, anonymous),
        (
            "bad token",
            None,
            cp.client(&control_plane::auth::new_token()),
        ),
        ("viewer", Some(Role::Viewer), cp.client(&tokens.viewer)),
        (
            "operator",
            Some(Role::Operator),
            cp.client(&tokens.operator),
        ),
        ("admin", Some(Role::Admin), cp.client(&tokens.admin)),
        (
            "gateway",
            Some(Role::Gateway),
            cp.client(tokens.gateway("hz")),
        ),
    ];
    let document = cp
        .client(&tokens.viewer)
        .openapi()
        .await
        .expect("the API document");
    let mut seen: BTreeMap<(String, String), BTreeSet<u16>> = BTreeMap::new();
    for endpoint in ENDPOINTS {
        let (path, body) = sample(&endpoint.method, endpoint.path);
        for (who, role, client) in &callers {
            let reply = client
                .send(endpoint.method.clone(), &path, &[], body.clone(), T)
                .await
                .unwrap_or_else(|e| panic!("{} {path} as {who}: {e}", endpoint.method));
            let status = reply.status;
            let expected_denial = match (endpoint.need, role) {
                (Need::Nothing, _) => None,
                (_, None) => Some(StatusCode::UNAUTHORIZED),
                (need, Some(role)) if !role.allows(need) => Some(StatusCode::FORBIDDEN),
                _ => None,
            };
            match expected_denial {
                Some(denial) => {
                    assert_eq!(status, denial, "{} {path} as {who}", endpoint.method);
                    let error: ApiError =
                        serde_json::from_slice(&reply.body).expect("a JSON error body");
                    assert!(!error.message.is_empty());
                }
                None => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{} {path} as {who}: {status}",
                    endpoint.method
                ),
            }
            if !status.is_success() {
                assert_eq!(
                    reply
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .map(|v| v.as_bytes()),
                    Some(&b"application/json"[..]),
                    "{} {path} as {who}: errors are JSON",
                    endpoint.method
                );
            }
            seen.entry((
                endpoint.path.to_owned(),
                endpoint.method.as_str().to_lowercase(),
            ))
            .or_default()
            .insert(status.as_u16());
        }
    }
    // The document lists exactly the served endpoints, and every status they answered.
    let paths = document["paths"].as_object().expect("paths");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |method| (path.clone(), method.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = seen.keys().cloned().collect();
    assert_eq!(documented, served);
    for ((path, method), statuses) in &seen {
        let responses = &paths[path][method]["responses"];
        for status in statuses {
            assert!(
                responses.get(status.to_string()).is_some(),
                "{method} {path} answered {status}, which the document does not list"
            );
        }
    }
    // Changes were audited, refusals included.
    let audit = cp.client(&tokens.viewer).audit(None).await.expect("audit");
    let denied = audit
        .iter()
        .filter(|e| e.action == "table.put" && e.status == Some(403))
        .count();
    assert_eq!(denied, 3, "PUT /v1/table: viewer, operator, gateway");
    // Calls without a valid token are counted, not audited one by one: anyone can send them.
    assert!(!audit.iter().any(|e| e.actor == "-"), "{audit:?}");
    let metrics = cp.client(&tokens.viewer).metrics().await.expect("metrics");
    let unauthenticated = metrics
        .lines()
        .find_map(|l| l.strip_prefix("unitgate_control_unauthenticated_total "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_default();
    // Every endpoint but /healthz, twice (no token, a bad one).
    assert_eq!(unauthenticated, 2 * (ENDPOINTS.len() as u64 - 1));
}

/// (name, method, path, body, expected status, what the message must name)
type Case = (
    &'static str,
    Method,
    String,
    Option<(bytes::Bytes, &'static str)>,
    StatusCode,
    &'static str,
);

async fn error_of(reply: control_api::Reply) -> (StatusCode, ApiError) {
    let error = serde_json::from_slice(&reply.body).unwrap_or_else(|_| {
        panic!(
            "JSON error body: {:?}",
            String::from_utf8_lossy(&reply.body)
        )
    });
    (reply.status, error)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_4xx_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let config = file_plane_config(dir.path(), &tokens);
    let cp = ControlProcess::start(&config);
    let admin = cp.client(&tokens.admin);
    let json =
        |s: &'static str| Some((bytes::Bytes::from_static(s.as_bytes()), "application/json"));
    let flip = |unit: &str| paths::fill(paths::UNIT_FLIP, &[unit]);

    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            Method::POST,
            flip("u01"),
            json("{\"to\": "),
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            "unknown field",
            Method::POST,
            flip("u01"),
            json(r#"{"to":"sh","mode":"planned","reason":"x","hurry":true}"#),
            StatusCode::BAD_REQUEST,
            "hurry",
        ),
        (
            "unknown nested field",
            Method::POST,
            flip("u01"),
            json(r#"{"to":"sh","mode":"planned","reason":"x","replication_check":{"lag":0}}"#),
            StatusCode::BAD_REQUEST,
            "body.replication_check",
        ),
        (
            "bad mode",
            Method::POST,
            flip("u01"),
            json(r#"{"to":"sh","mode":"soon","reason":"x"}"#),
            StatusCode::BAD_REQUEST,
            "body.mode",
        ),
        (
            "unknown unit",
            Method::POST,
            flip("u99"),
            json(r#"{"to":"sh","mode":"planned","reason":"x"}"#),
            StatusCode::NOT_FOUND,
            "u99",
        ),
        (
            "unknown region",
            Method::POST,
            flip("u01"),
            json(r#"{"to":"mars","mode":"planned","reason":"x"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "body.to",
        ),
        (
            "same region",
            Method::POST,
            flip("u01"),
            json(r#"{"to":"hz","mode":"planned","reason":"x"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "already in region",
        ),
        (
            "two replication checks",
            Method::POST,
            flip("u01"),
            json(
                r#"{"to":"sh","mode":"planned","reason":"x","replication_check":{"delay_s":1,"confirm":true}}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "exactly one",
        ),
        (
            "no reason",
            Method::POST,
            flip("u01"),
            json(r#"{"to":"sh","mode":"planned","reason":" "}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "body.reason",
        ),
        (
            "unknown flip",
            Method::POST,
            paths::fill(paths::FLIP_CONFIRM, &["f0-nope"]),
            None,
            StatusCode::NOT_FOUND,
            "f0-nope",
        ),
        (
            "unknown version",
            Method::GET,
            paths::fill(paths::TABLE_VERSION, &["99"]),
            None,
            StatusCode::NOT_FOUND,
            "99",
        ),
        (
            "version not a number",
            Method::GET,
            paths::fill(paths::TABLE_VERSION, &["x"]),
            None,
            StatusCode::BAD_REQUEST,
            "\"x\"",
        ),
        (
            "no such endpoint",
            Method::GET,
            "/v1/nothing".into(),
            None,
            StatusCode::NOT_FOUND,
            "/v1/nothing",
        ),
        (
            "wrong method",
            Method::DELETE,
            paths::TABLE.into(),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "DELETE",
        ),
        (
            "put without If-Match",
            Method::PUT,
            paths::TABLE.into(),
            json("{}"),
            StatusCode::PRECONDITION_REQUIRED,
            "If-Match",
        ),
        (
            "audit limit",
            Method::GET,
            format!("{}?limit=many", paths::AUDIT),
            None,
            StatusCode::BAD_REQUEST,
            "limit",
        ),
    ];
    for (name, method, path, body, status, needle) in cases {
        let reply = admin.send(method, &path, &[], body, T).await.expect(name);
        let (got, error) = error_of(reply).await;
        assert_eq!(got, status, "{name}: {error:?}");
        assert!(
            error.message.contains(needle),
            "{name}: {:?} does not name {needle:?}",
            error.message
        );
    }

    // Oversized bodies are refused before they are read whole.
    let big = vec![b' '; 70_000];
    let reply = admin
        .send(
            Method::POST,
            &flip("u01"),
            &[],
            Some((big.into(), "application/json")),
            T,
        )
        .await
        .expect("oversized");
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);

    // A table with problems: 422 with every problem, its path and its line:column.
    let broken = std::fs::read_to_string(support::example_table_path())
        .expect("example")
        .replace("slots: [[1667, 3333]]", "slots: [[1667, 3330]]")
        .replace(
            "region: sz\n    standby: hz\n    state: active",
            "region: mars\n    standby: hz\n    state: active",
        );
    let put = PutTable {
        if_match: 1,
        ..Default::default()
    };
    let (status, error) = match admin.put_table(&TableText::yaml(broken), &put).await {
        Err(ClientError::Api { status, error }) => (status, error),
        other => panic!("put: {other:?}"),
    };
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error.problems.len() >= 2, "{error:?}");
    assert!(
        error
            .problems
            .iter()
            .all(|p| p.line.is_some() && p.column.is_some()),
        "{error:?}"
    );
    assert!(
        error.problems.iter().any(|p| p.message.contains("mars")),
        "{error:?}"
    );
    // Stale If-Match.
    let stale = PutTable {
        if_match: 7,
        ..Default::default()
    };
    let example = std::fs::read(support::example_table_path()).expect("example");
    let refused = admin
        .put_table(&TableText::yaml(example), &stale)
        .await
        .expect_err("stale");
    assert_eq!(refused.status(), Some(StatusCode::CONFLICT), "{refused}");
    // Nothing above changed the table.
    let table = admin.table().await.expect("table");
    assert_eq!(table.version, 1);

    // If-Match is a version, bare, quoted or weak-quoted: nothing looser.
    let put_headers = |if_match: &'static [u8], reason: &'static [u8]| {
        vec![
            (
                http::header::IF_MATCH,
                http::HeaderValue::from_bytes(if_match).expect("if-match"),
            ),
            (
                http::header::HeaderName::from_static(control_api::REASON_HEADER),
                http::HeaderValue::from_bytes(reason).expect("reason"),
            ),
        ]
    };
    let example =
        bytes::Bytes::from(std::fs::read(support::example_table_path()).expect("example"));
    let yaml = || Some((example.clone(), "application/yaml"));
    for loose in [&b"+1"[..], b"W/W/\"\"1", b"W/1", b"\"1"] {
        let reply = admin
            .send(
                Method::PUT,
                paths::TABLE,
                &put_headers(loose, b"r"),
                yaml(),
                T,
            )
            .await
            .expect("put");
        let (status, error) = error_of(reply).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{loose:?}: {error:?}");
        assert!(error.message.contains("If-Match"), "{error:?}");
    }
    // A reason that is not UTF-8 is refused, never taken for no reason.
    let reply = admin
        .send(
            Method::PUT,
            paths::TABLE,
            &put_headers(b"1", b"caf\xe9"),
            yaml(),
            T,
        )
        .await
        .expect("put");
    let (status, error) = error_of(reply).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error:?}");
    assert!(
        error.message.contains(control_api::REASON_HEADER),
        "{error:?}"
    );
    // A reason in any language is kept as it was sent.
    let reason = "café au lait — ü 变更";
    let reply = admin
        .send(
            Method::PUT,
            paths::TABLE,
            &put_headers(b"W/\"1\"", reason.as_bytes()),
            yaml(),
            T,
        )
        .await
        .expect("put");
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    let table = admin.table().await.expect("table");
    assert_eq!((table.version, table.reason.as_deref()), (2, Some(reason)));

    // A whole number written as a float is that integer: this flip is refused for its target
    // region, not for the number's spelling.
    let reply = admin
        .send(
            Method::POST,
            &flip("u01"),
            &[],
            json(r#"{"to":"hz","mode":"planned","reason":"x","converge_timeout_s":30.0}"#),
            T,
        )
        .await
        .expect("flip");
    let (status, error) = error_of(reply).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error:?}");
    assert!(error.message.contains("already in region"), "{error:?}");
}

#[test]
fn refuses_to_start_without_tokens_or_with_a_short_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = file_store(dir.path());
    let none = dir.path().join("none.yaml");
    std::fs::write(
        &none,
        format!("listen: 127.0.0.1:0\nstore: {store}\ntokens: []\n"),
    )
    .expect("write");
    let (code, stderr) = support::run_to_end(&none);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("no API tokens"), "{stderr}");

    let token_file = dir.path().join("short-token");
    std::fs::write(&token_file, "only-twenty-characters\n").expect("write");
    let short = dir.path().join("short.yaml");
    std::fs::write(
        &short,
        format!(
            "listen: 127.0.0.1:0\nstore: {store}\ntokens:\n  - {{ name: gw, role: gateway, token_file: {} }}\n",
            token_file.display()
        ),
    )
    .expect("write");
    let (code, stderr) = support::run_to_end(&short);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("at least 32"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_https_and_gateways_follow_it_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("key");
    let tokens = Tokens::new();
    let config = file_plane_config(dir.path(), &tokens);
    let text = std::fs::read_to_string(&config).expect("config")
        + &format!(
            "tls: {{ cert: {}, key: {} }}\n",
            cert_path.display(),
            key_path.display()
        );
    std::fs::write(&config, text).expect("write");
    let cp = ControlProcess::start(&config);
    let url = format!("https://localhost:{}", cp.addr.port());
    let client = Client::new(&url, Some(&tokens.viewer), Some(&cert_path))
        .expect("client")
        .with_timeout(T);
    let table = client.table().await.expect("over TLS");
    assert_eq!(table.version, 1);
    // Plain HTTP on the TLS port gets nowhere; an untrusted certificate is refused.
    let plain = Client::new(&format!("http://{}", cp.addr), Some(&tokens.viewer), None)
        .expect("client")
        .with_timeout(Duration::from_secs(2));
    assert!(plain.table().await.is_err());
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let other_path = dir.path().join("other.pem");
    std::fs::write(&other_path, other.cert.pem()).expect("cert");
    let untrusting = Client::new(&url, Some(&tokens.viewer), Some(&other_path))
        .expect("client")
        .with_timeout(T);
    let refused = untrusting.table().await;
    assert!(format!("{:?}", refused.expect_err("untrusted")).contains("TLS"));
    // A gateway follows it over TLS.
    let text = format!(
        "region: hz\nlisten: {{ http: [\"127.0.0.1:0\"] }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\ntable: {{ control_plane: {{ url: \"{url}\", token: \"{}\", ca_file: {} }} }}\nhop_secret: {}\nhealth_check: {{ interval_ms: 0 }}\naccess_log: false\n",
        tokens.gateway("hz"),
        cert_path.display(),
        support::HOP_SECRET
    );
    let config = gateway::config::GatewayConfig::parse(&text, "test").expect("gateway config");
    let listeners = gateway::Listeners::bind(&config).expect("bind");
    let gateway = gateway::Gateway::start(config, listeners)
        .await
        .expect("gateway starts");
    assert_eq!(gateway.store.current().expect("table").table.version(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_resolves_against_the_table_in_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let config = file_plane_config(dir.path(), &tokens);
    let cp = ControlProcess::start(&config);
    let viewer = cp.client(&tokens.viewer);
    let ask = |user: &str, entry: &str| control_api::ExplainRequest {
        method: "POST".into(),
        path: "/cart".into(),
        headers: BTreeMap::new(),
        user: Some(user.into()),
        entry_region: Some(entry.into()),
    };
    // User 4321 is slot 4321, unit u03, in sh: entering hz, it is forwarded there.
    let explained = viewer.explain(&ask("4321", "hz")).await.expect("explained");
    assert_eq!(explained.version, 1);
    let decision = &explained.decision;
    assert_eq!(decision["unit"], "u03", "{decision}");
    assert_eq!(decision["region"], "sh", "{decision}");
    assert_eq!(decision["cross_region"], true, "{decision}");
    assert_eq!(decision["key_source"], "header:x-user-id", "{decision}");
    // After a flip, the same question gets the new answer, with the new version.
    let operator = cp.client(&tokens.operator);
    let id = operator
        .start_flip(
            "u03",
            &support::flip_request(
                serde_json::json!({"to": "sz", "mode": "emergency", "reason": "drill"}),
            ),
        )
        .await
        .expect("flip")
        .id;
    support::wait_flip(&operator, &id).await;
    let explained = viewer.explain(&ask("4321", "hz")).await.expect("explained");
    assert_eq!(
        (explained.version, explained.decision["region"].as_str()),
        (2, Some("sz"))
    );
    // Nothing was changed or audited by explaining.
    let audit = viewer.audit(None).await.expect("audit");
    assert!(
        !audit.iter().any(|e| e.action.contains("explain")),
        "{audit:?}"
    );
    // An unknown entry region is named.
    let refused = viewer.explain(&ask("1", "mars")).await.expect_err("mars");
    assert_eq!(refused.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    assert!(refused.to_string().contains("entry_region"), "{refused}");
}
