//! `unitctl` as operators run it: real process, real files, exit codes and output.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example() -> String {
    root()
        .join("deploy/examples/three-regions.yaml")
        .display()
        .to_string()
}

fn unitctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unitctl"))
        .args(args)
        .output()
        .expect("unitctl runs")
}

fn unitctl_stdin(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_unitctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unitctl runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("unitctl ends");
    writer.join().expect("writer").expect("written");
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(output)))
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("unitctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("written");
    path
}

#[test]
fn validate_accepts_the_examples() {
    let minimal = root()
        .join("deploy/examples/minimal.yaml")
        .display()
        .to_string();
    let out = unitctl(&["validate", &example(), &minimal]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("three-regions.yaml: ok (version 1, 3 regions, 6 units, 3 routes)")
    );
}

#[test]
fn validate_prints_every_problem_with_file_line_col_and_exits_1() {
    let broken = root().join("router-rules/tests/broken/many-problems.yaml");
    let shown = broken.display().to_string();
    let out = unitctl(&["validate", &shown, &example()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let problems: Vec<&str> = text.lines().filter(|l| l.starts_with(&shown)).collect();
    assert!(problems.len() >= 10, "{text}");
    assert!(
        text.contains(&format!(
            "{shown}:9:11: regions[1].name: duplicate region name \"hz\""
        )),
        "{text}"
    );
    // The valid file in the same run is still reported.
    assert!(text.contains("three-regions.yaml: ok"), "{text}");
}

#[test]
fn input_errors_exit_2() {
    assert_eq!(
        unitctl(&["validate", "/nonexistent/table.yaml"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        unitctl(&[
            "route",
            "--table",
            &example(),
            "--region",
            "mars",
            "--user",
            "1"
        ])
        .status
        .code(),
        Some(2)
    );
    assert_eq!(unitctl(&["route", "--bogus-flag"]).status.code(), Some(2));
    let broken = root()
        .join("router-rules/tests/broken/gap.yaml")
        .display()
        .to_string();
    let out = unitctl(&["route", "--table", &broken, "--user", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gap: slots 5000-5099"));
}

/// `route` takes --table FILE or --live, one of them; `diff` takes OLD NEW or --live FILE;
/// --live without a control plane to ask is bad usage, and a broken FILE is found first.
#[test]
fn live_dry_runs_are_checked_as_usage() {
    let no_server = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_unitctl"))
            .args(args)
            .env_remove("UNITGATE_SERVER")
            .env_remove("UNITGATE_TOKEN")
            .env_remove("UNITGATE_TOKEN_FILE")
            .output()
            .expect("unitctl runs")
    };
    let example = example();
    for args in [
        &["route", "--user", "1"][..],
        &["route", "--table", &example, "--live", "--user", "1"],
        &["diff", &example],
        &["diff", "--live", &example, &example],
        &["diff", &example, &example, "--live", &example],
    ] {
        let out = no_server(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        if args.contains(&"--server") {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("--reason"),
                "{args:?}: the missing reason is named"
            );
        }
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Usage: unitctl"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for args in [
        &["route", "--live", "--user", "1"][..],
        &["diff", "--live", &example],
    ] {
        let out = no_server(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("UNITGATE_SERVER"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let broken = root()
        .join("router-rules/tests/broken/gap.yaml")
        .display()
        .to_string();
    let out = no_server(&["diff", "--live", &broken]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gap: slots 5000-5099"));
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["validate", "route", "diff", "schema"] {
        let out = unitctl(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{sub}");
        assert!(stdout(&out).contains("Usage: unitctl"), "{sub}");
    }
}

#[test]
fn route_json_has_the_documented_fields() {
    let out = unitctl(&[
        "route",
        "--table",
        &example(),
        "--user",
        "4321",
        "--region",
        "hz",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    for field in [
        "route",
        "class",
        "key",
        "key_source",
        "slot",
        "unit",
        "unit_state",
        "region",
        "service",
        "endpoint",
        "is_write",
        "action",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(v["route"], "cart");
    assert_eq!(v["class"], "C");
    assert_eq!(v["key"], "4321");
    assert_eq!(v["key_source"], "header:x-user-id");
    assert_eq!(v["slot"], 4321);
    assert_eq!(v["unit"], "u03");
    assert_eq!(v["unit_state"], "active");
    assert_eq!(v["region"], "sh");
    assert_eq!(v["entry_region"], "hz");
    assert_eq!(v["cross_region"], true);
    assert_eq!(v["endpoint"], "127.0.0.1:18201");
    assert_eq!(v["is_write"], false);
    assert_eq!(v["action"], "forward");
}

#[test]
fn route_explains_each_step() {
    let out = unitctl(&[
        "route",
        "--table",
        &example(),
        "--user",
        "4321",
        "--region",
        "hz",
    ]);
    let text = stdout(&out);
    for expected in [
        "key      \"4321\" from header:x-user-id",
        "slot     4321 = 4321 mod 10000",
        "unit     u03 (active), owns slots 3334-4999",
        "region   sh: entered hz, so the gateway forwards it to sh's gateways (127.0.0.1:8002)",
        "action   forward",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn route_covers_cookies_p_class_and_missing_keys() {
    let cookie = json(&unitctl(&[
        "route",
        "--table",
        &example(),
        "--path",
        "/order/1",
        "--cookie",
        "uid=9000",
        "--output",
        "json",
    ]));
    assert_eq!(
        (cookie["key_source"].as_str(), cookie["unit"].as_str()),
        (Some("cookie:uid"), Some("u06"))
    );
    let p_write = json(&unitctl(&[
        "route",
        "--table",
        &example(),
        "--path",
        "/item/1",
        "--method",
        "post",
        "--region",
        "sz",
        "--output",
        "json",
    ]));
    assert_eq!(
        (
            p_write["class"].as_str(),
            p_write["region"].as_str(),
            p_write["is_write"].as_bool()
        ),
        (Some("P"), Some("hz"), Some(true))
    );
    // A GET that frameworks execute as a DELETE goes where writes go, and says why.
    let overridden = unitctl(&[
        "route",
        "--table",
        &example(),
        "--path",
        "/item/1",
        "--header",
        "X-HTTP-Method-Override: DELETE",
        "--region",
        "sz",
    ]);
    let text = stdout(&overridden);
    assert!(
        text.contains("GET overridden to DELETE is a write") && text.contains("region   hz"),
        "{text}"
    );
    let missing = json(&unitctl(&[
        "route",
        "--table",
        &example(),
        "--path",
        "/cart",
        "--output",
        "json",
    ]));
    assert_eq!(missing["action"], "missing_key");
    assert_eq!(
        missing["key_sources_tried"],
        serde_json::json!(["header:x-user-id", "cookie:uid"])
    );
    let none = json(&unitctl(&[
        "route",
        "--table",
        &example(),
        "--path",
        "/admin",
        "--output",
        "json",
    ]));
    assert_eq!(none["action"], "no_route");
}

#[test]
fn batch_counts_per_unit_and_region() {
    let ids: String = (0..10_000).map(|i| format!("{i}\n")).collect();
    let out = unitctl_stdin(
        &[
            "route",
            "--table",
            &example(),
            "--batch",
            "-",
            "--output",
            "json",
        ],
        &ids,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v["total"], 10_000);
    let groups = v["groups"].as_array().expect("groups");
    let count = |unit: &str| {
        groups
            .iter()
            .find(|g| g["unit"] == unit)
            .and_then(|g| g["count"].as_u64())
    };
    // Numeric IDs 0..9999 are exactly the slots: each unit gets its range's size.
    assert_eq!(count("u01"), Some(1667));
    assert_eq!(count("u03"), Some(1666));
    let regions = v["by_region"].as_array().expect("by_region");
    assert_eq!(
        regions
            .iter()
            .map(|r| r["count"].as_u64().unwrap_or(0))
            .sum::<u64>(),
        10_000
    );
}

#[test]
fn batch_takes_json_requests() {
    let lines = "{\"user\": \"42\", \"method\": \"POST\", \"path\": \"/order\"}\n{\"path\": \"/item/1\", \"method\": \"PUT\", \"region\": \"sz\"}\n{\"path\": \"/cart\"}\n";
    let v = json(&unitctl_stdin(
        &[
            "route",
            "--table",
            &example(),
            "--batch",
            "-",
            "--output",
            "json",
        ],
        lines,
    ));
    assert_eq!(v["total"], 3);
    let groups = v["groups"].as_array().expect("groups");
    assert!(
        groups
            .iter()
            .any(|g| g["action"] == "missing_key" && g["count"] == 1),
        "{v}"
    );
    assert!(
        groups
            .iter()
            .any(|g| g["action"] == "forward" && g["unit"] == "u01" && g["count"] == 2),
        "{v}"
    );
    let bad = unitctl_stdin(
        &["route", "--table", &example(), "--batch", "-"],
        "{\"usr\": 1}\n",
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("-:1: unknown field `usr`"));
}

#[test]
fn diff_reports_what_a_flip_moves() {
    let text = std::fs::read_to_string(example()).expect("example");
    let flipped = text.replace("version: 1", "version: 2").replace(
        "slots: [[3334, 4999]]\n    region: sh\n    standby: sz",
        "slots: [[3334, 4999]]\n    region: sz\n    standby: sh",
    );
    let new = temp_file("flipped.yaml", &flipped);
    let sample = temp_file(
        "users.txt",
        &(3000..5000).map(|i| format!("{i}\n")).collect::<String>(),
    );
    let out = unitctl(&[
        "diff",
        &example(),
        &new.display().to_string(),
        "--sample",
        &sample.display().to_string(),
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "changes exit 1");
    let v = json(&out);
    assert_eq!(v["slots_changing_region"], 1666);
    assert_eq!(v["slots_changing_unit"], 0);
    assert_eq!(v["slot_moves"][0]["first"], 3334);
    assert_eq!(v["units"][0]["region"], serde_json::json!(["sh", "sz"]));
    assert_eq!(v["sample"]["keys"], 2000);
    assert_eq!(v["sample"]["changing_region"], 1666);
    let same = unitctl(&["diff", &example(), &example()]);
    assert_eq!(same.status.code(), Some(0));
    assert!(stdout(&same).contains("no routing change"));
}

#[test]
fn schema_is_json_schema_of_the_table() {
    let v = json(&unitctl(&["schema"]));
    assert_eq!(v["title"], "RawTable");
    assert!(v["properties"]["units"].is_object());
}

#[test]
fn batch_each_prints_every_decision_as_json_lines() {
    let ids = "4321\n10\n{\"path\": \"/item/1\", \"method\": \"PUT\", \"region\": \"sz\"}\n";
    let out = unitctl_stdin(
        &[
            "route",
            "--table",
            &example(),
            "--region",
            "hz",
            "--batch",
            "-",
            "--each",
        ],
        ids,
    );
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        (
            lines[0]["unit"].as_str(),
            lines[0]["region"].as_str(),
            lines[0]["cross_region"].as_bool()
        ),
        (Some("u03"), Some("sh"), Some(true))
    );
    assert_eq!(
        (lines[1]["unit"].as_str(), lines[1]["region"].as_str()),
        (Some("u01"), Some("hz"))
    );
    assert_eq!(
        (
            lines[2]["class"].as_str(),
            lines[2]["region"].as_str(),
            lines[2]["entry_region"].as_str()
        ),
        (Some("P"), Some("hz"), Some("sz"))
    );
}

/// A reader that stops reading early (`unitctl schema | head`) ends unitctl quietly: exit 0,
/// no panic on stderr.
#[test]
fn a_closed_stdout_ends_quietly() {
    // The read end closed before unitctl writes a byte: its first write fails.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_unitctl"))
        .arg("schema")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("unitctl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");

    // A reader that takes a few bytes, then goes, while unitctl still has much to write (more
    // than a pipe holds).
    let users: String = (0..20_000).map(|u| format!("{u}\n")).collect();
    let input = temp_file("users.txt", &users);
    for args in [
        vec!["schema"],
        vec![
            "route",
            "--table",
            &example(),
            "--batch",
            input.to_str().expect("path"),
            "--each",
        ],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_unitctl"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unitctl runs");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut first = [0u8; 16];
        std::io::Read::read_exact(&mut stdout, &mut first).expect("a few bytes");
        drop(stdout);
        let out = child.wait_with_output().expect("unitctl ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// `unitctl ARGS` run in `dir`, so that files are named as the test wrote them.
fn unitctl_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unitctl"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("unitctl runs")
}

/// A syntax error, an unknown field and a semantic problem, and the one line each prints as.
const BROKEN: [(&str, &str); 3] = [
    (
        "bad-yaml.yaml",
        "bad-yaml.yaml:5:6: regions[0].pools.cart: illegal placement of ':' indicator\n",
    ),
    (
        "typo-field.yaml",
        "typo-field.yaml:18:5: units[1].regoin: unknown field `regoin`, expected one of name, slots, region, standby, state, center, pinned_keys, limits\n",
    ),
    (
        "overlap.yaml",
        "overlap.yaml:17:13: units[1].slots[0]: overlap: slots 5000-5099 of unit \"u2\" are also in units[0].slots[0] [0, 5099] of unit \"u1\"\n",
    ),
];

#[test]
fn every_command_that_loads_a_table_prints_its_problems_as_file_line_col_path_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(example(), dir.path().join("good.yaml")).expect("copy");
    for (name, expected) in BROKEN {
        std::fs::copy(
            root().join("router-rules/tests/broken").join(name),
            dir.path().join(name),
        )
        .expect("copy");
        let validate = unitctl_in(dir.path(), &["validate", name]);
        assert_eq!(validate.status.code(), Some(1), "{name}");
        assert_eq!(stdout(&validate), expected, "validate {name}");

        let route = unitctl_in(dir.path(), &["route", "--table", name, "--user", "1"]);
        assert_eq!(route.status.code(), Some(2), "{name}");
        assert_eq!(
            String::from_utf8_lossy(&route.stderr),
            expected,
            "route {name}"
        );

        let diff = unitctl_in(dir.path(), &["diff", "good.yaml", name]);
        assert_eq!(diff.status.code(), Some(2), "{name}");
        assert_eq!(
            String::from_utf8_lossy(&diff.stderr),
            expected,
            "diff {name}"
        );
    }
}

#[test]
fn json_tables_print_the_same_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).expect("write");
    };
    write("syntax.json", "{\"version\": 1,\n \"regions\": [\n");
    write("typo.json", "{\"version\": 1,\n \"regons\": []}\n");
    let table = router_rules::load_yaml(&std::fs::read_to_string(example()).expect("example"))
        .expect("valid");
    let mut raw = table.raw().clone();
    raw.units[1].region = "mars".to_owned();
    write(
        "mars.json",
        &serde_json::to_string_pretty(&raw).expect("json"),
    );
    let out = unitctl_in(
        dir.path(),
        &["validate", "syntax.json", "typo.json", "mars.json"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "syntax.json:3:1: (document): EOF while parsing a list\n\
         typo.json:2:9: regons: unknown field `regons`, expected one of `version`, `slots`, `write_methods`, `regions`, `units`, `routes`\n\
         mars.json: units[1].region: unknown region \"mars\"; known regions: hz, sh, sz\n"
    );
}

#[test]
fn flip_evacuate_and_restore_check_their_arguments_before_any_request() {
    for sub in ["flip", "evacuate", "restore"] {
        let out = unitctl(&[sub, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{sub}");
        assert!(stdout(&out).contains("Usage: unitctl"), "{sub}");
        assert!(stdout(&out).contains("--wait"), "{sub}");
    }
    // No server is given: a usage error comes before any attempt to reach one.
    for args in [
        &["flip", "--to", "sz"][..],
        // A flip says why, as evacuations do: the audit log keeps it.
        &[
            "flip",
            "u03",
            "--to",
            "sz",
            "--server",
            "http://127.0.0.1:9",
        ],
        &["evacuate", "sz"],
        &["evacuate", "--reason", "drill"],
        &["restore", "sz"],
        &[
            "evacuate",
            "sz",
            "--reason",
            "x",
            "--confirm",
            "--delay-s=1",
        ],
        &[
            "flip",
            "u03",
            "u04",
            "--to=sz",
            "--confirm",
            "--probe=http://x",
        ],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_unitctl"))
            .args(args)
            .env_remove("UNITGATE_SERVER")
            .output()
            .expect("unitctl runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Usage: unitctl"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
