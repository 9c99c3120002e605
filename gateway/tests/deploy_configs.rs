//! Every gateway configuration under deploy/ parses.

use std::path::Path;

#[test]
fn shipped_gateway_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("deploy/gateway").flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("readable");
            if let Err(error) =
                gateway::config::GatewayConfig::parse(&text, &path.display().to_string())
            {
                panic!("{error}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 1);
}
