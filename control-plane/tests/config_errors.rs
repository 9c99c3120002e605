//! `unitgate-control` on a broken configuration: every problem on a line of its own, as
//! `file:line:col: path: message`, the shape of the gateway's and `unitctl`'s errors.

use std::path::Path;
use std::process::{Command, Output};

const DIGEST: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A config that `check` accepts, its store in `dir`.
fn good(dir: &Path) -> String {
    format!(
        "store: {{ file: {{ dir: {} }} }}\ntokens:\n  - name: ops\n    role: admin\n    sha256: \"{DIGEST}\"\n",
        dir.join("store").display()
    )
}

/// `unitgate-control ARGS` run in `dir`, so that files are named as the test wrote them.
fn control(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unitgate-control"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("unitgate-control runs")
}

/// `check` on `text` written as `control.yaml`: its exit code and standard error.
fn check(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("control.yaml"), text).expect("write");
    let out = control(dir.path(), &["check", "--config", "control.yaml"]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_good_config_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("control.yaml"), good(dir.path())).expect("write");
    let out = control(dir.path(), &["check", "--config", "control.yaml"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration ok\n");
}

#[test]
fn a_syntax_error_is_one_line_at_its_place() {
    let (code, stderr) = check("store: { file: { dir: /tmp/x } }\ntokens: [\n");
    assert_eq!(code, Some(2));
    assert_eq!(stderr, "control.yaml:2:9: tokens: unclosed bracket '['\n");
}

#[test]
fn an_unknown_field_is_placed_at_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = check(&good(dir.path()).replace("    role:", "    rol:"));
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "control.yaml:4:5: tokens[0].rol: unknown field `rol`, expected one of name, role, sha256, token_file, gateway_id, region\n"
    );
}

#[test]
fn wrong_types_and_missing_fields_name_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = check(&format!("{}watch_hold_s: soon\n", good(dir.path())));
    assert_eq!(code, Some(2));
    assert_eq!(stderr, "control.yaml:6:15: watch_hold_s: invalid u64\n");

    let (code, stderr) = check(&good(dir.path()).replace("role: admin", "role: root"));
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "control.yaml:4:11: tokens[0].role: unknown variant `root`, expected one of viewer, operator, admin, gateway\n"
    );

    let (code, stderr) = check(&good(dir.path()).replace("    role: admin\n", ""));
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "control.yaml:3:5: tokens[0].role: missing field `role`\n"
    );
}

#[test]
fn semantic_problems_are_placed_at_their_field_one_line_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, stderr) = check(&format!(
        "store: {{ file: {{ dir: {} }} }}\ntokens: []\nwatch_hold_s: 0\n",
        dir.path().display()
    ));
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "control.yaml:2:9: tokens: no API tokens configured; the control plane does not run open\n\
         control.yaml:3:15: watch_hold_s: 0 is outside 1..=300\n"
    );
}

#[test]
fn every_unusable_token_is_named_at_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "{}  - name: short\n    role: viewer\n    sha256: abc\n  - name: gw\n    role: gateway\n    sha256: \"{}\"\n  - name: file\n    role: viewer\n    token_file: missing-token\n",
        good(dir.path()),
        "b".repeat(64)
    );
    let (code, stderr) = check(&text);
    assert_eq!(code, Some(2));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert_eq!(
        lines[0],
        "control.yaml:8:13: tokens[1].sha256: not 64 hex digits (make one with `unitgate-control hash-token`)"
    );
    assert_eq!(
        lines[1],
        "control.yaml:9:5: tokens[2]: a gateway token must name the gateway_id (or a pattern such as hz-*) and the region it speaks for"
    );
    assert!(
        lines[2].starts_with("control.yaml:14:17: tokens[3].token_file: missing-token: "),
        "{stderr}"
    );

    let twice = format!(
        "{}  - name: again\n    role: viewer\n    sha256: \"{DIGEST}\"\n",
        good(dir.path())
    );
    let (code, stderr) = check(&twice);
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "control.yaml:6:5: tokens[1]: the same token is configured twice\n"
    );
}

#[test]
fn files_the_config_names_are_checked_and_placed_at_their_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "{}tls: {{ cert: missing.pem, key: missing.key }}\ninitial_table: missing.yaml\n",
        good(dir.path())
    );
    let (code, stderr) = check(&text);
    assert_eq!(code, Some(2));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].starts_with("control.yaml:6:6: tls: "), "{stderr}");
    assert!(
        lines[1].starts_with("control.yaml:7:16: initial_table: cannot read missing.yaml: "),
        "{stderr}"
    );
}

#[test]
fn initial_table_problems_are_placed_in_the_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = Path::new(env!("CARGO_MANIFEST_DIR")).join("../router-rules/tests/broken");
    // The same lines as router-rules' own golden files say for these tables.
    for name in ["bad-yaml", "typo-field", "overlap"] {
        let expected =
            std::fs::read_to_string(broken.join(format!("{name}.expected"))).expect("golden");
        let table = format!("{name}.yaml");
        std::fs::copy(broken.join(&table), dir.path().join(&table)).expect("copy");
        std::fs::write(
            dir.path().join("control.yaml"),
            format!("{}initial_table: {table}\n", good(dir.path())),
        )
        .expect("write");
        let out = control(dir.path(), &["check", "--config", "control.yaml"]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected, "{name}");
    }
}

#[test]
fn starting_with_a_broken_config_prints_the_same_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("control.yaml"),
        good(dir.path()).replace(DIGEST, "abc"),
    )
    .expect("write");
    let out = control(dir.path(), &["--config", "control.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "control.yaml:5:13: tokens[0].sha256: not 64 hex digits (make one with `unitgate-control hash-token`)\n"
    );
}
