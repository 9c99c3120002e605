//! The API document a real `unitgate-control` serves at `/v1/openapi.json` is a valid OpenAPI
//! 3.1 document, as `openapi-spec-validator` judges it (installed, pinned, by
//! scripts/install-test-deps into target/test-venv, or `$UNITGATE_TEST_VENV`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{ControlProcess, Tokens, file_plane_config};

const T: Duration = Duration::from_secs(10);

/// The validator's command, or a panic that says how to install it.
fn validator() -> PathBuf {
    let venv = std::env::var_os("UNITGATE_TEST_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv"),
        PathBuf::from,
    );
    let program = venv.join("bin/openapi-spec-validator");
    assert!(
        program.is_file(),
        "openapi-spec-validator is not installed ({} is missing): run scripts/install-test-deps, \
         which makes that venv (or scripts/test, which runs it before the tests)",
        program.display()
    );
    program
}

/// Run the validator on `document`; (passed, what it printed).
fn validate(
    program: &Path,
    dir: &Path,
    name: &str,
    document: &serde_json::Value,
) -> (bool, String) {
    let path = dir.join(name);
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(document).expect("serialise"),
    )
    .expect("write the document");
    let output = Command::new(program)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_served_api_document_validates() {
    let program = validator();
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let cp = ControlProcess::start(&file_plane_config(dir.path(), &tokens));
    let document: serde_json::Value = cp
        .client(&tokens.viewer)
        .get_json("/v1/openapi.json", T)
        .await
        .expect("the API document");
    assert_eq!(document["openapi"], "3.1.0");

    let (passed, printed) = validate(&program, dir.path(), "openapi.json", &document);
    assert!(
        passed,
        "openapi-spec-validator refuses /v1/openapi.json:\n{printed}"
    );

    // The validator does look: the same document with one reference that resolves nowhere
    // (as the `#/$defs/...` references once did) is refused.
    let mut broken = document.clone();
    broken["components"]["schemas"]["PutResult"] =
        serde_json::json!({ "$ref": "#/$defs/PutResult" });
    let (passed, printed) = validate(&program, dir.path(), "broken.json", &broken);
    assert!(
        !passed,
        "openapi-spec-validator accepted a dangling reference:\n{printed}"
    );
}

/// Malformed requests the server refuses are refused with a status the document lists for
/// that operation, and the document's parameters say why they are malformed.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let cp = ControlProcess::start(&file_plane_config(dir.path(), &tokens));
    let admin = cp.client(&tokens.admin);
    let document: serde_json::Value = admin
        .get_json("/v1/openapi.json", T)
        .await
        .expect("the API document");
    let table = std::fs::read(support::example_table_path()).expect("the example table");
    let if_match = |value: &'static str| {
        vec![(
            http::header::IF_MATCH,
            http::HeaderValue::from_static(value),
        )]
    };
    let yaml = Some((bytes::Bytes::from(table), "application/yaml"));
    let cases = [
        ("get", "/v1/audit", "?limit=-1", vec![], None, 400),
        ("get", "/v1/audit", "?limit=x", vec![], None, 400),
        ("get", "/v1/table/versions/{n}", "", vec![], None, 400),
        ("post", "/v1/table/plan", "", vec![], None, 400),
        ("put", "/v1/table", "", if_match(""), yaml.clone(), 400),
        ("put", "/v1/table", "", if_match("one"), yaml.clone(), 400),
        ("put", "/v1/table", "", vec![], yaml.clone(), 428),
        ("put", "/v1/table", "", if_match("0"), yaml.clone(), 409),
    ];
    for (method, path, query, headers, body, expected) in cases {
        let sent = format!("{}{query}", path.replace("{n}", "latest"));
        let reply = admin
            .send(
                method.to_uppercase().parse().expect("method"),
                &sent,
                &headers,
                body,
                T,
            )
            .await
            .expect("an answer");
        assert_eq!(
            reply.status.as_u16(),
            expected,
            "{method} {sent} {headers:?}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert!(
            document["paths"][path][method]["responses"]
                .get(expected.to_string())
                .is_some(),
            "{method} {path} answers {expected}, which the document does not list"
        );
    }
    // Why they are malformed, in the document: limits and versions are integers from 0,
    // If-Match is a version number, a plan has a body.
    let parameter = |path: &str, method: &str, name: &str| {
        document["paths"][path][method]["parameters"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{method} {path}: no parameter {name}"))
    };
    for (path, name) in [("/v1/audit", "limit"), ("/v1/table/versions/{n}", "n")] {
        let schema = &parameter(path, "get", name)["schema"];
        assert_eq!(schema["type"], "integer", "{path} {name}");
        assert_eq!(schema["minimum"], 0, "{path} {name}");
    }
    let pattern = parameter("/v1/table", "put", "If-Match")["schema"]["pattern"]
        .as_str()
        .expect("If-Match has a pattern")
        .to_owned();
    assert!(pattern.starts_with('^') && pattern.ends_with('$') && pattern.contains("[0-9]"));
    assert_eq!(
        document["paths"]["/v1/table/plan"]["post"]["requestBody"]["required"],
        true
    );
}
