//! Every control-plane configuration under deploy/ parses, tokens included.

use std::path::Path;

#[test]
fn shipped_control_plane_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/control-plane");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir)
        .expect("deploy/control-plane")
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let config =
                control_plane::config::ControlConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
            control_plane::auth::Tokens::load(&config.tokens)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 1);
}
