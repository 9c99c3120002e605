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

/// The YAML blocks of a Markdown file.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```yaml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn documented_table_is_valid() {
    let doc = std::fs::read_to_string(support::repo_root().join("docs/routing-table.md"))
        .expect("docs/routing-table.md");
    let blocks = yaml_blocks(&doc);
    assert!(!blocks.is_empty());
    for block in blocks {
        if let Err(error) = router_rules::load_yaml(&block) {
            panic!("{}", error.render("docs/routing-table.md"));
        }
    }
}

#[test]
fn published_json_schema_is_current() {
    let path = support::repo_root().join("docs/routing-table.schema.json");
    let current = router_rules::json_schema();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let text = serde_json::to_string_pretty(&current).expect("json") + "\n";
        std::fs::write(&path, text).expect("writable");
    }
    let published: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("schema file")).expect("json");
    assert_eq!(
        published, current,
        "regenerate with UPDATE_GOLDEN=1 cargo test -p router-rules"
    );
}
