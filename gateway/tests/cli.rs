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
        stderr.contains("typo.yaml:2:1: unknown field `listne`"),
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("the table has no region \"bj\""));
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
