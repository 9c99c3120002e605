//! `unitgate check` and start-up errors, as operators meet them.

use std::process::Command;

fn unitgate(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_unitgate"))
        .args(args)
        .output()
        .expect("runs")
}

#[test]
fn check_accepts_a_good_config_and_names_what_is_wrong_in_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/three-regions.yaml");
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!("region: sh\nlisten: {{ http: [\"127.0.0.1:0\"] }}\ntable: {{ file: {} }}\nhop_secret: 0123456789abcdef0123456789abcdef\n", example.display()),
    )
    .expect("write");
    let out = unitgate(&["check", "--config", &good.display().to_string()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (table version 1)"));

    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        std::fs::read_to_string(&good)
            .expect("read")
            .replace("listen:", "listne:"),
    )
    .expect("write");
    let out = unitgate(&["check", "--config", &typo.display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{}:2:1: listne: unknown field `listne`, expected one of ",
            typo.display()
        )),
        "{stderr}"
    );

    let wrong_region = dir.path().join("region.yaml");
    std::fs::write(
        &wrong_region,
        std::fs::read_to_string(&good)
            .expect("read")
            .replace("region: sh", "region: bj"),
    )
    .expect("write");
    let out = unitgate(&["check", "--config", &wrong_region.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let region_line = std::fs::read_to_string(&wrong_region)
        .expect("read")
        .lines()
        .position(|l| l.starts_with("region: bj"))
        .expect("region line")
        + 1;
    assert!(
        stderr.starts_with(&format!(
            "{}:{region_line}:9: region: the table ",
            wrong_region.display()
        )) && stderr.contains("has no region \"bj\" (it has: hz, sh, sz)"),
        "{stderr}"
    );
}

#[test]
fn no_table_and_no_cache_refuses_to_start_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "region: sh\nlisten: {{ http: [\"127.0.0.1:0\"] }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\ntable: {{ file: {} }}\ncache_dir: {}\nhop_secret: 0123456789abcdef0123456789abcdef\n",
            dir.path().join("missing.yaml").display(),
            dir.path().join("cache").display()
        ),
    )
    .expect("write");
    let out = unitgate(&["--config", &config.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no routing table to serve"), "{stderr}");
    assert!(stderr.contains("missing.yaml: cannot read"), "{stderr}");
}

/// A gateway config in `dir` that `check` accepts, serving `table` (a path relative to `dir`).
fn good_config(table: &str) -> String {
    format!(
        "region: sh\nlisten: {{ http: [\"127.0.0.1:0\"] }}\ntable: {{ file: {table} }}\nhop_secret: 0123456789abcdef0123456789abcdef\n"
    )
}

/// `unitgate ARGS` run in `dir`, so that files are named as the test wrote them: exit code and
/// standard error.
fn unitgate_in(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_unitgate"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `unitgate check` of `config` written as `gateway.yaml`, next to the example table.
fn check_config(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/three-regions.yaml");
    std::fs::copy(example, dir.path().join("table.yaml")).expect("copy");
    std::fs::write(dir.path().join("gateway.yaml"), config).expect("write");
    unitgate_in(dir.path(), &["check", "--config", "gateway.yaml"])
}

#[test]
fn config_errors_read_file_line_col_path_message() {
    let good = good_config("table.yaml");
    assert_eq!(check_config(&good), (Some(0), String::new()));

    // Syntax.
    assert_eq!(
        check_config("region: sh\nlisten: { http: [\n"),
        (
            Some(2),
            "gateway.yaml:2:17: listen.http: unclosed bracket '['\n".to_owned()
        )
    );
    // An unknown field, at its key; the location is not repeated at the end.
    let (code, stderr) = check_config(&good.replace("listen:", "listne:"));
    assert_eq!(code, Some(2));
    assert!(
        stderr.starts_with(
            "gateway.yaml:2:1: listne: unknown field `listne`, expected one of region, listen, "
        ),
        "{stderr}"
    );
    assert!(stderr.ends_with("http1_codec\n"), "{stderr}");
    // A wrong type and a missing field.
    assert_eq!(
        check_config(&good.replace("\"127.0.0.1:0\"", "\"localhost\"")),
        (
            Some(2),
            "gateway.yaml:2:18: listen.http[0]: invalid socket address syntax\n".to_owned()
        )
    );
    assert_eq!(
        check_config(&good.replace("region: sh\n", "")),
        (
            Some(2),
            "gateway.yaml:1:1: region: missing field `region`\n".to_owned()
        )
    );
    // Semantic problems: every one, at its field, in file order.
    let bad = good
        .replace("table.yaml }", "table.yaml, poll_interval_ms: 0 }")
        .replace("0123456789abcdef0123456789abcdef", "short");
    assert_eq!(
        check_config(&format!("{bad}health_check: {{ path: healthz }}\n")),
        (
            Some(2),
            "gateway.yaml:3:46: table.poll_interval_ms: must be above 0\n\
             gateway.yaml:4:13: hop_secret: 5 bytes; at least 32 are needed\n\
             gateway.yaml:5:23: health_check.path: \"healthz\" must start with '/'\n"
                .to_owned()
        )
    );
    // A file the config names, at the field that names it.
    let (code, stderr) = check_config(&good.replace(
        "hop_secret: 0123456789abcdef0123456789abcdef",
        "hop_secret_file: missing-secret",
    ));
    assert_eq!(code, Some(1));
    assert!(
        stderr.starts_with("gateway.yaml:4:18: hop_secret_file: cannot read missing-secret: "),
        "{stderr}"
    );
}

#[test]
fn table_errors_in_check_have_the_same_shape() {
    let broken =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../router-rules/tests/broken");
    // The same lines as router-rules' own golden files say for these tables.
    for name in ["bad-yaml", "typo-field", "overlap"] {
        let expected =
            std::fs::read_to_string(broken.join(format!("{name}.expected"))).expect("golden");
        let dir = tempfile::tempdir().expect("tempdir");
        let table = format!("{name}.yaml");
        std::fs::copy(broken.join(&table), dir.path().join(&table)).expect("copy");
        std::fs::write(dir.path().join("gateway.yaml"), good_config(&table)).expect("write");
        assert_eq!(
            unitgate_in(dir.path(), &["check", "--config", "gateway.yaml"]),
            (Some(1), expected),
            "{name}"
        );
    }
}

#[test]
fn starting_with_a_broken_config_prints_the_same_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("gateway.yaml"),
        good_config("table.yaml").replace("0123456789abcdef0123456789abcdef", "short"),
    )
    .expect("write");
    assert_eq!(
        unitgate_in(dir.path(), &["--config", "gateway.yaml"]),
        (
            Some(2),
            "gateway.yaml:4:13: hop_secret: 5 bytes; at least 32 are needed\n".to_owned()
        )
    );
}
