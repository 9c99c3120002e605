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
