//! Every configuration under deploy/ is valid: gateway and control
//! plane configs (also those embedded in Kubernetes ConfigMaps), and the unit files and
//! container build say what the operations guide promises.

use std::path::{Path, PathBuf};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check_table(text: &str, origin: &str) {
    if let Err(error) = router_rules::load_yaml(text) {
        panic!("{}", error.render(origin));
    }
}

fn check_gateway(text: &str, origin: &str) {
    gateway::config::GatewayConfig::parse(text, origin).unwrap_or_else(|e| panic!("{e}"));
}

fn check_control(text: &str, origin: &str) {
    let config =
        control_plane::config::ControlConfig::parse(text, origin).unwrap_or_else(|e| panic!("{e}"));
    // Token files live on the target machine; digests can be checked here.
    if config.tokens.iter().all(|t| t.token_file.is_none()) {
        control_plane::auth::Tokens::load(&config.tokens)
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
    }
}

#[test]
fn gateway_and_control_plane_configs() {
    // The example tables under deploy/examples are checked with the table format, in
    // router-rules/tests/deploy_files.rs.
    for path in files(&deploy().join("gateway"), "yaml") {
        check_gateway(&read(&path), &path.display().to_string());
    }
    for path in files(&deploy().join("control-plane"), "yaml") {
        check_control(&read(&path), &path.display().to_string());
    }
}

#[test]
fn kubernetes_manifests() {
    let mut config_maps = 0;
    let mut gateway_regions = Vec::new();
    for path in files(&deploy().join("kubernetes"), "yaml") {
        let origin = path.display().to_string();
        for (i, document) in read(&path).split("\n---\n").enumerate() {
            let doc: serde_json::Value = serde_saphyr::from_str(document)
                .unwrap_or_else(|e| panic!("{origin} document {i}: {e}"));
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{origin} document {i}: no kind"));
            assert_eq!(
                doc["metadata"]["namespace"].as_str().or(Some("unitgate")),
                Some("unitgate"),
                "{origin}"
            );
            match kind {
                "ConfigMap" => {
                    config_maps += 1;
                    for (name, text) in doc["data"].as_object().expect("data") {
                        let text = text.as_str().expect("text");
                        let at = format!("{origin}: {name}");
                        match name.as_str() {
                            "gateway.yaml" => check_gateway(text, &at),
                            "control.yaml" => check_control(text, &at),
                            "table.yaml" => check_table(text, &at),
                            other => panic!("{origin}: unexpected ConfigMap key {other}"),
                        }
                    }
                }
                "Deployment" => {
                    let pod = &doc["spec"]["template"]["spec"];
                    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{origin}");
                    let container = &pod["containers"][0];
                    assert_eq!(
                        container["securityContext"]["allowPrivilegeEscalation"], false,
                        "{origin}"
                    );
                    if doc["metadata"]["labels"]["app"] == "unitgate-gateway" {
                        assert_eq!(
                            container["readinessProbe"]["httpGet"]["path"], "/readyz",
                            "{origin}"
                        );
                        gateway_regions.push(
                            doc["metadata"]["labels"]["region"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                        );
                    }
                }
                "Service" | "StatefulSet" | "Namespace" => {}
                other => panic!("{origin}: unexpected kind {other}"),
            }
        }
    }
    assert!(config_maps >= 4);
    gateway_regions.sort();
    assert_eq!(gateway_regions, ["hz", "sh", "sz"]);
}

#[test]
fn systemd_units_are_hardened() {
    for (unit, binary) in [
        ("unitgate.service", "unitgate"),
        ("unitgate-control.service", "unitgate-control"),
    ] {
        let text = read(&deploy().join("systemd").join(unit));
        let has = |line: &str| text.lines().any(|l| l.trim() == line);
        for line in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            &format!("User={binary}"),
        ] {
            assert!(has(line), "{unit}: missing {line}");
        }
        assert!(
            text.contains(&format!("ExecStart=/usr/local/bin/{binary} --config")),
            "{unit}"
        );
    }
    let gateway = read(&deploy().join("systemd/unitgate.service"));
    assert!(
        gateway
            .lines()
            .any(|l| l.trim() == "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"),
        "only binding low ports"
    );
    assert!(
        gateway
            .lines()
            .any(|l| l.trim() == "AmbientCapabilities=CAP_NET_BIND_SERVICE")
    );
    let users = read(&deploy().join("systemd/unitgate.sysusers"));
    assert!(users.contains("u unitgate ") && users.contains("u unitgate-control "));
}

#[test]
fn container_build_is_multi_stage_and_unprivileged() {
    let text = read(&deploy().join("container/Dockerfile"));
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage");
    assert!(
        text.contains("--features control-plane/etcd"),
        "the image has the etcd store"
    );
    assert!(text.contains("protobuf-compiler"));
    let user = text
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER");
    assert!(
        !user.contains("root") && !user.trim_end().ends_with(" 0"),
        "{user}"
    );
}
