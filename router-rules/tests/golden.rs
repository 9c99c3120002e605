//! The exact error text users see for broken tables. Each `tests/broken/NAME.yaml` has its
//! expected output in `tests/broken/NAME.expected`. Set `UPDATE_GOLDEN=1` to rewrite them
//! after an intended change, then review the diff.

use std::path::Path;

#[test]
fn broken_tables_give_the_expected_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/broken exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "golden cases missing: {files:?}");
    let mut mismatches = Vec::new();
    for path in files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path).expect("readable");
        let error = match router_rules::load_yaml(&text) {
            Ok(_) => panic!("{name} should be refused"),
            Err(error) => error,
        };
        let actual = error.render(name);
        let expected_path = path.with_extension("expected");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&expected_path, &actual).expect("writable");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            mismatches.push(format!(
                "--- {name}\nexpected:\n{expected}actual:\n{actual}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken/many-problems.yaml"),
    )
    .expect("readable");
    let error = router_rules::load_yaml(&text).expect_err("refused");
    assert!(error.problems.len() >= 10, "{error}");
    assert!(
        error.problems.iter().all(|p| p.location.is_some()),
        "{error}"
    );
}

#[test]
fn json_problems_name_field_paths() {
    let table = router_rules::load_yaml(&support_three_regions()).expect("valid example");
    let mut raw = table.raw().clone();
    raw.units[1].region = "mars".to_owned();
    let json = serde_json::to_string(&raw).expect("serialisable");
    let error = router_rules::load_json(&json).expect_err("refused");
    assert_eq!(
        error.render("body"),
        "body: units[1].region: unknown region \"mars\"; known regions: hz, sh, sz\n"
    );
    let error = router_rules::load_json(r#"{"version": 1, "regions": [], "unit": []}"#)
        .expect_err("refused");
    assert_eq!(
        error.render("body"),
        "body:1:36: unit: unknown field `unit`, expected one of `version`, `slots`, `write_methods`, `regions`, `units`, `routes`\n"
    );
}

fn support_three_regions() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/three-regions.yaml"),
    )
    .expect("example exists")
}
