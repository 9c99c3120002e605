//! Every YAML file under deploy/ is checked: what we ship must load.

mod support;

use std::path::{Path, PathBuf};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Routing tables are the files under `deploy/examples/` and any `*.table.yaml`. Other YAML
/// files (gateway configs, manifests) are checked by the crates that read them.
fn is_routing_table(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "examples")
        || path.to_string_lossy().ends_with(".table.yaml")
}

#[test]
fn every_shipped_routing_table_is_valid() {
    let root = support::repo_root();
    let mut files = Vec::new();
    yaml_files(&root.join("deploy"), &mut files);
    let tables: Vec<_> = files.iter().filter(|p| is_routing_table(p)).collect();
    assert!(
        tables.len() >= 2,
        "expected the example tables, found {tables:?}"
    );
    for path in tables {
        let text = std::fs::read_to_string(path).expect("readable");
        if let Err(error) = router_rules::load_yaml(&text) {
            panic!("{}", error.render(&path.display().to_string()));
        }
    }
}

#[test]
fn three_region_example_is_as_documented() {
    let table = router_rules::load_yaml(&support::three_regions_yaml()).expect("valid");
    assert_eq!(table.slot_count(), 10_000);
    let regions: Vec<&str> = table.regions().iter().map(|r| &*r.name).collect();
    assert_eq!(regions, ["hz", "sh", "sz"]);
    assert_eq!(table.units().len(), 6);
    for region in 0..3 {
        assert_eq!(
            table.units().iter().filter(|u| u.region == region).count(),
            2
        );
    }
    assert_eq!(&*table.center_unit().name, "u01");
    assert_eq!(&*table.regions()[table.center_unit().region].name, "hz");
    // Numeric user IDs land on id mod 10000.
    assert_eq!(table.unit_of_key("4321").1, 4321);
    assert_eq!(table.unit_of_key("123456789").1, 6789);
}
