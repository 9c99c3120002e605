//! Every configuration under deploy/ is valid: gateway and control
//! plane configs (also those embedded in Kubernetes ConfigMaps), the Kubernetes manifests
//! against the API's schemas, and the unit files and container build say what the operations
//! guide promises. The unit files' commands run as written (binaries and paths mapped to this
//! build and a temporary directory), the systemd reload included, and so do the commands in
//! the documentation's code blocks that need no server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
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

/// The Kubernetes manifests' documents, each with the file it is in.
fn kubernetes_documents() -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for path in files(&deploy().join("kubernetes"), "yaml") {
        let origin = path.display().to_string();
        for (i, document) in read(&path).split("\n---\n").enumerate() {
            let doc: serde_json::Value = serde_saphyr::from_str(document)
                .unwrap_or_else(|e| panic!("{origin} document {i}: {e}"));
            out.push((origin.clone(), doc));
        }
    }
    out
}

/// Whether a label selector's `matchLabels` select these labels.
fn selects(selector: &serde_json::Value, labels: &serde_json::Value) -> bool {
    selector["matchLabels"]
        .as_object()
        .is_some_and(|want| want.iter().all(|(k, v)| labels[k] == *v))
}

#[test]
fn kubernetes_manifests() {
    let documents = kubernetes_documents();
    let mut config_maps = 0;
    let mut gateway_regions = Vec::new();
    let mut workloads = Vec::new();
    let budgets: Vec<&serde_json::Value> = documents
        .iter()
        .filter(|(_, doc)| doc["kind"] == "PodDisruptionBudget")
        .map(|(_, doc)| doc)
        .collect();
    let config_map = |name: &str| {
        documents
            .iter()
            .find(|(_, d)| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("no ConfigMap {name}"))
    };
    for (origin, doc) in &documents {
        let kind = doc["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{origin}: a document without kind"));
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
            "Deployment" | "StatefulSet" => {
                let name = doc["metadata"]["name"].as_str().expect("name");
                let at = format!("{origin}: {kind} {name}");
                let pod = &doc["spec"]["template"]["spec"];
                let security = &pod["securityContext"];
                assert_eq!(security["runAsNonRoot"], true, "{at}");
                assert_eq!(
                    security["seccompProfile"]["type"], "RuntimeDefault",
                    "{at}: the pod's seccomp profile"
                );
                for container in pod["containers"].as_array().expect("containers") {
                    let security = &container["securityContext"];
                    assert_eq!(security["allowPrivilegeEscalation"], false, "{at}");
                    assert_eq!(security["readOnlyRootFilesystem"], true, "{at}");
                    assert_eq!(security["capabilities"]["drop"][0], "ALL", "{at}");
                    let resources = &container["resources"];
                    for (what, value) in [
                        ("requests.cpu", &resources["requests"]["cpu"]),
                        ("requests.memory", &resources["requests"]["memory"]),
                        ("limits.memory", &resources["limits"]["memory"]),
                    ] {
                        assert!(!value.is_null(), "{at}: no resources.{what}");
                    }
                }
                let labels = &doc["spec"]["template"]["metadata"]["labels"];
                assert!(
                    budgets
                        .iter()
                        .any(|b| selects(&b["spec"]["selector"], labels)),
                    "{at}: no PodDisruptionBudget selects its pods"
                );
                workloads.push(labels.clone());
                if doc["metadata"]["labels"]["app"] == "unitgate-gateway" {
                    let container = &pod["containers"][0];
                    assert_eq!(
                        container["readinessProbe"]["httpGet"]["path"], "/readyz",
                        "{at}"
                    );
                    let region = doc["metadata"]["labels"]["region"]
                        .as_str()
                        .unwrap_or_default();
                    gateway_regions.push(region.to_owned());
                    let map_name = pod["volumes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find_map(|v| v["configMap"]["name"].as_str())
                        .filter(|n| n.starts_with("unitgate-gateway-"))
                        .expect("the gateway's ConfigMap");
                    let config: serde_json::Value = serde_saphyr::from_str(
                        config_map(map_name)["data"]["gateway.yaml"]
                            .as_str()
                            .expect("gateway.yaml"),
                    )
                    .expect("gateway.yaml");
                    let mount_of = |path: &str| {
                        container["volumeMounts"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("\0")))
                            .max_by_key(|m| m["mountPath"].as_str().map(str::len))
                            .and_then(|m| m["name"].as_str())
                            .map(str::to_owned)
                    };
                    // The token crosses the network: https, verified against a mounted CA.
                    let control = &config["table"]["control_plane"];
                    assert!(
                        control["url"]
                            .as_str()
                            .is_some_and(|u| u.starts_with("https://")),
                        "{at}: the control plane's URL must be https"
                    );
                    let ca = control["ca_file"].as_str().expect("ca_file");
                    assert!(mount_of(ca).is_some(), "{at}: ca_file {ca} is not mounted");
                    // The table cache outlives the pod: a volume claimed per pod.
                    assert_eq!(
                        kind, "StatefulSet",
                        "{at}: the cache needs a volume per pod"
                    );
                    let cache = config["cache_dir"].as_str().expect("cache_dir");
                    let volume = mount_of(cache).expect("cache_dir is mounted");
                    assert!(
                        doc["spec"]["volumeClaimTemplates"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|t| t["metadata"]["name"] == volume.as_str()),
                        "{at}: cache_dir {cache} is on {volume}, not on a volume claimed per pod"
                    );
                }
                if name == "unitgate-control" {
                    let config: serde_json::Value = serde_saphyr::from_str(
                        config_map("unitgate-control")["data"]["control.yaml"]
                            .as_str()
                            .expect("control.yaml"),
                    )
                    .expect("control.yaml");
                    assert!(
                        config["tls"]["cert"].is_string() && config["tls"]["key"].is_string(),
                        "{at}: the control plane serves https (tls: in its config)"
                    );
                    let probe = &pod["containers"][0]["readinessProbe"]["httpGet"];
                    assert_eq!(probe["scheme"], "HTTPS", "{at}");
                    assert!(
                        pod["volumes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|v| v["secret"]["secretName"] == "unitgate-control-tls"),
                        "{at}: the certificate's Secret is mounted"
                    );
                }
            }
            "PodDisruptionBudget" => {
                assert!(
                    doc["spec"]["maxUnavailable"] == 1 || doc["spec"]["minAvailable"].is_number(),
                    "{origin}"
                );
            }
            "Service" | "Namespace" => {}
            other => panic!("{origin}: unexpected kind {other}"),
        }
    }
    assert!(config_maps >= 4);
    gateway_regions.sort();
    assert_eq!(gateway_regions, ["hz", "sh", "sz"]);
    // Every budget selects some workload's pods.
    for budget in &budgets {
        assert!(
            workloads
                .iter()
                .any(|labels| selects(&budget["spec"]["selector"], labels)),
            "PodDisruptionBudget {} selects no pods",
            budget["metadata"]["name"]
        );
    }
}

// ---- Kubernetes manifests against the API's schemas ------------------------------------------

/// The validator, as scripts/install-test-deps installs it: kubernetes-validate, with the
/// Kubernetes API's JSON schemas it ships (it reads them from its package, never from the
/// network), in a venv of its own.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The oldest Kubernetes the manifests are for, and the newest the validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

fn kubernetes_validate() -> PathBuf {
    let venv = std::env::var_os("UNITGATE_K8S_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/k8s-venv"));
    let program = venv.join("bin/kubernetes-validate");
    assert!(
        program.is_file(),
        "{} is missing: the Kubernetes manifests are validated with {KUBERNETES_VALIDATE}; \
         scripts/install-test-deps installs it there (or set UNITGATE_K8S_VENV to a venv that has it)",
        program.display()
    );
    program
}

/// Validate every resource in `paths` (`resources` of them in all) against the API's schemas,
/// strictly (unknown fields are errors), for each version in [`KUBERNETES_VERSIONS`]. A kind
/// the validator has no schema for only gets a warning from it: here it is an error too.
fn validate_manifests(paths: &[PathBuf], resources: usize) -> Result<(), String> {
    let program = kubernetes_validate();
    for version in KUBERNETES_VERSIONS {
        let output = Command::new(&program)
            .args(["--strict", "--kubernetes-version", version])
            .args(paths)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let passed = |l: &&str| l.starts_with("INFO ") && l.contains(" passed for resource ");
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| !passed(l) && !l.trim().is_empty())
            .collect();
        let passed = text.lines().filter(passed).count();
        if !output.status.success() || !problems.is_empty() || passed != resources {
            return Err(format!(
                "Kubernetes {version}: {passed} of {resources} resources valid ({}):\n{}",
                output.status,
                problems.join("\n")
            ));
        }
    }
    Ok(())
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let paths = files(&deploy().join("kubernetes"), "yaml");
    let resources = kubernetes_documents().len();
    if let Err(problems) = validate_manifests(&paths, resources) {
        panic!("deploy/kubernetes:\n{problems}");
    }
}

/// The validation above refuses what the API server would: a misspelt field, a string where
/// an integer goes, a required field left out, a kind that does not exist.
#[test]
fn kubernetes_validation_refuses_broken_manifests() {
    let original = read(&deploy().join("kubernetes/gateway-hz.yaml"));
    let resources = original.split("\n---\n").count();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gateway-hz.yaml");
    std::fs::write(&path, &original).expect("write");
    validate_manifests(std::slice::from_ref(&path), resources)
        .unwrap_or_else(|e| panic!("the unbroken copy: {e}"));
    for (what, from, to, expected) in [
        (
            "a misspelt field",
            "periodSeconds: 2",
            "periodSecond: 2",
            "'periodSecond' was unexpected",
        ),
        (
            "a string for an integer",
            "replicas: 3",
            "replicas: three",
            "'three' is not of type 'integer'",
        ),
        (
            "a required field left out",
            "- name: gateway\n          image:",
            "- image:",
            "'name' is a required property",
        ),
        (
            "a misspelt field in the seccomp profile",
            "seccompProfile: { type: RuntimeDefault }",
            "seccompProfile: { typ: RuntimeDefault }",
            "'type' is a required property",
        ),
        (
            "a kind that does not exist",
            "kind: PodDisruptionBudget",
            "kind: PodDisruptionBudgett",
            "PodDisruptionBudgett",
        ),
    ] {
        assert!(original.contains(from), "gateway-hz.yaml has no {from:?}");
        std::fs::write(&path, original.replacen(from, to, 1)).expect("write");
        match validate_manifests(std::slice::from_ref(&path), resources) {
            Ok(()) => panic!("{what} ({to:?}) was not refused"),
            Err(problems) => assert!(
                problems.contains(expected),
                "{what}: refused, but not for it:\n{problems}"
            ),
        }
    }
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

/// systemd itself reads the unit files without a complaint (`systemd-analyze verify`): no
/// unknown directive, no bad value, no broken quoting. Only that the binaries are not
/// installed in /usr/local/bin here is expected.
#[test]
fn systemd_accepts_the_unit_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut units = Vec::new();
    for path in files(&deploy().join("systemd"), "service") {
        let copy = dir.path().join(path.file_name().expect("name"));
        std::fs::copy(&path, &copy).expect("copy");
        units.push(copy);
    }
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze: {e}: scripts/install-test-deps installs it (Debian's systemd)")
        });
    let said = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> = said
        .lines()
        .filter(|l| {
            !(l.contains(": Command /usr/local/bin/unitgate")
                && l.ends_with("is not executable: No such file or directory"))
        })
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify:\n{}",
        complaints.join("\n")
    );
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

// ---- Running what the unit files and the docs say, on a stand-in for a machine ---------------

/// Longest wait for anything a process should do.
const WAIT: Duration = Duration::from_secs(30);

/// A stand-in for the machine the deploy files are written for: absolute paths under
/// `/etc/`, `/var/lib/` and `/run/` go to a temporary directory, `/usr/local/bin/` to this
/// build's binaries, and each IPv4 address with a port to 127.0.0.1 and a free port (the same
/// address always to the same port, so that what names one listener still finds it).
struct Host {
    root: tempfile::TempDir,
    bin: PathBuf,
    ports: HashMap<SocketAddr, u16>,
}

impl Host {
    fn new() -> Self {
        let bin = unitgate_e2e::bin("unitgate")
            .parent()
            .expect("the binaries' directory")
            .to_owned();
        Self {
            root: tempfile::tempdir().expect("tempdir"),
            bin,
            ports: HashMap::new(),
        }
    }

    /// Where `path` (absolute, on the real machine) is here.
    fn path(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    /// `text` with its paths and addresses mapped.
    fn map(&mut self, text: &str) -> String {
        const PREFIXES: [&str; 4] = ["/usr/local/bin/", "/etc/", "/var/lib/", "/run/"];
        let part_of_a_name = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        let mut previous: Option<char> = None;
        while let Some(c) = rest.chars().next() {
            let at_start = !previous.is_some_and(part_of_a_name);
            let prefix = PREFIXES.iter().find(|p| at_start && rest.starts_with(**p));
            if let Some(prefix) = prefix {
                let base = if *prefix == "/usr/local/bin/" {
                    self.bin.clone()
                } else {
                    self.path(prefix.trim_end_matches('/'))
                };
                out.push_str(&format!("{}/", base.display()));
                rest = &rest[prefix.len()..];
                previous = Some('/');
                continue;
            }
            if c.is_ascii_digit() && !previous.is_some_and(|p| p.is_ascii_digit() || p == '.') {
                let len = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                    .unwrap_or(rest.len());
                if let Ok(addr @ SocketAddr::V4(_)) = rest[..len].parse::<SocketAddr>() {
                    let port = *self.ports.entry(addr).or_insert_with(testkit::free_port);
                    out.push_str(&format!("127.0.0.1:{port}"));
                    rest = &rest[len..];
                    previous = Some('0');
                    continue;
                }
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
            previous = Some(c);
        }
        out
    }

    /// The local address the machine's `addr` maps to.
    fn addr(&mut self, addr: &str) -> SocketAddr {
        self.map(addr).parse().expect("an address")
    }

    /// Write `text` to `path` (absolute, on the real machine), mapped.
    fn install(&mut self, path: &str, text: &str) {
        let text = self.map(text);
        let target = self.path(path);
        std::fs::create_dir_all(target.parent().expect("a directory")).expect("mkdir");
        std::fs::write(&target, text).expect("write");
    }

    /// What a gateway config and a control-plane config name besides themselves: tables, the
    /// hop secret, and a gateway token for region sh (known to the control plane's config,
    /// given to a gateway taking its table from the control plane).
    fn install_configs(&mut self, gateway_example: &str) {
        let table = read(&deploy().join("examples/three-regions.yaml"));
        self.install("/etc/unitgate/table.yaml", &table);
        self.install("/etc/unitgate-control/table.yaml", &table);
        self.install(
            "/etc/unitgate/hop-secret",
            "deploy-files-test-hop-secret-0123456789abcdef\n",
        );
        let token = "deploy-files-test-gateway-token-0123456789abcdef";
        self.install("/etc/unitgate/control-token", token);
        // The example's digests are placeholders: the sh gateways' gets this token's.
        let control = read(&deploy().join("control-plane/control.example.yaml"));
        let digest = control_plane::auth::hash_token(token);
        let mut replaced = false;
        let control: String = control
            .lines()
            .map(|line| match line.find("sha256: ") {
                Some(at) if line.contains("region: sh") && line.contains("role: gateway") => {
                    replaced = true;
                    let end = at + "sha256: ".len() + 64;
                    format!("{}sha256: {digest}{}\n", &line[..at], &line[end..])
                }
                _ => format!("{line}\n"),
            })
            .collect();
        assert!(
            replaced,
            "control.example.yaml: no gateway token for region sh"
        );
        self.install("/etc/unitgate-control/control.yaml", &control);
        self.install(
            "/etc/unitgate/gateway.yaml",
            &read(&deploy().join("gateway").join(gateway_example)),
        );
    }
}

/// A unit file's directives, in order: (section, key, value).
fn unit_file(path: &Path) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for line in read(path).lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        // A line ending in a backslash goes on on the next one; the backslash becomes a space.
        if let Some(start) = line.strip_suffix('\\') {
            pending.push_str(start);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let whole = std::mem::take(&mut pending);
        if let Some(name) = whole.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, value)) = whole.split_once('=') {
            out.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        } else {
            panic!("{}: cannot read {whole:?}", path.display());
        }
    }
    out
}

fn directive(unit: &[(String, String, String)], key: &str) -> Vec<String> {
    unit.iter()
        .filter(|(section, k, _)| section == "Service" && k == key)
        .map(|(_, _, v)| v.clone())
        .collect()
}

/// An `Exec*=` command line as systemd reads it: words split at blanks, quotes and C escapes
/// undone, `%%` and `$$` made `%` and `$`, `${NAME}` and a word `$NAME` replaced from `env`.
/// What this does not handle (command prefixes, other specifiers, `;`) fails the test rather
/// than being read wrong.
fn exec_words(line: &str, env: &HashMap<&str, String>) -> Vec<String> {
    assert!(
        !line.starts_with(['-', '@', ':', '+', '!', '|']),
        "{line}: command prefixes are not supported here"
    );
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (c, quote) {
                ('\\', _) => match chars.next() {
                    Some('n') => word.push('\n'),
                    Some('t') => word.push('\t'),
                    Some(c @ ('\\' | '"' | '\'' | ' ')) => word.push(c),
                    other => panic!("{line}: escape \\{other:?} is not supported here"),
                },
                ('"' | '\'', None) => quote = Some(c),
                (c, Some(q)) if c == q => quote = None,
                (c, None) if c.is_whitespace() => break,
                (c, _) => word.push(c),
            }
        }
        assert!(quote.is_none(), "{line}: unbalanced quotes");
        assert_ne!(
            word, ";",
            "{line}: several commands on one line are not supported here"
        );
        // Specifiers.
        let mut unspecified = String::new();
        let mut it = word.chars();
        while let Some(c) = it.next() {
            match (c, c == '%') {
                (_, false) => unspecified.push(c),
                (_, true) => match it.next() {
                    Some('%') => unspecified.push('%'),
                    other => panic!("{line}: specifier %{other:?} is not supported here"),
                },
            }
        }
        // Environment variables.
        if let Some(name) = unspecified
            .strip_prefix('$')
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            let value = env
                .get(name)
                .unwrap_or_else(|| panic!("{line}: ${name} is not set"));
            words.extend(value.split_whitespace().map(str::to_owned));
            continue;
        }
        let mut expanded = String::new();
        let mut rest = unspecified.as_str();
        while let Some(at) = rest.find('$') {
            expanded.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('$') {
                expanded.push('$');
                rest = after;
            } else if let Some((name, after)) =
                rest.strip_prefix('{').and_then(|r| r.split_once('}'))
            {
                let value = env
                    .get(name)
                    .unwrap_or_else(|| panic!("{line}: ${{{name}}} is not set"));
                expanded.push_str(value);
                rest = after;
            } else {
                panic!("{line}: a $ inside a word that is not $$ or ${{NAME}}");
            }
        }
        expanded.push_str(rest);
        words.push(expanded);
    }
    words
}

/// The command an `Exec*=` line runs on `host`.
fn exec_command(host: &mut Host, line: &str, env: &HashMap<&str, String>) -> Command {
    let words: Vec<String> = exec_words(line, env)
        .iter()
        .map(|word| host.map(word))
        .collect();
    let (program, args) = words.split_first().expect("a command");
    let mut command = Command::new(program);
    command.args(args).envs(env);
    command
}

/// A process (and whatever it starts with the same output) whose output lines are collected.
struct Proc {
    name: String,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    /// Lines seen so far, and how many of the two pipes are closed.
    progress: tokio::sync::watch::Receiver<(usize, usize)>,
}

impl Proc {
    fn spawn(name: &str, mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, progress) = tokio::sync::watch::channel((0, 0));
        let tx = Arc::new(tx);
        let pipes: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for pipe in pipes {
            let (lines, tx) = (lines.clone(), tx.clone());
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut held = lines.lock().unwrap_or_else(|e| e.into_inner());
                    held.push(line);
                    let n = held.len();
                    drop(held);
                    tx.send_modify(|p| p.0 = n);
                }
                tx.send_modify(|p| p.1 += 1);
            });
        }
        Self {
            name: name.to_owned(),
            child: Some(child),
            lines,
            progress,
        }
    }

    fn output(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    async fn until(&self, what: &str, done: impl Fn(&[String], bool) -> bool) {
        let mut progress = self.progress.clone();
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                let closed = progress.borrow_and_update().1 == 2;
                let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if done(&lines, closed) {
                    return Ok(());
                }
                if closed {
                    return Err("its output closed");
                }
                let _ = progress.changed().await;
            }
        })
        .await;
        match waited {
            Ok(Ok(())) => {}
            Ok(Err(why)) => panic!(
                "{}: {why} before {what}; output:\n{}",
                self.name,
                self.output()
            ),
            Err(_) => panic!(
                "{}: no {what} in {WAIT:?}; output:\n{}",
                self.name,
                self.output()
            ),
        }
    }

    /// Wait for a line containing `text`.
    async fn line(&self, text: &str) {
        self.until(&format!("{text:?}"), |lines, _| {
            lines.iter().any(|l| l.contains(text))
        })
        .await;
    }

    /// Wait until every process writing to its output has exited.
    async fn closed(&self) {
        self.until("the end of its output", |_, closed| closed)
            .await;
    }

    /// Wait for the process itself to exit.
    async fn exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a child not yet waited for");
        let waited = tokio::time::timeout(
            WAIT,
            tokio::task::spawn_blocking(move || child.wait().expect("wait")),
        )
        .await;
        match waited {
            Ok(status) => status.expect("the waiting thread"),
            Err(_) => panic!(
                "{}: still running after {WAIT:?}; output:\n{}",
                self.name,
                self.output()
            ),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Send `signal` (a name: TERM, KILL) to `pid`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// A process that is not this test's child, killed if the test ends before it did.
struct Orphan(Option<u32>);

impl Drop for Orphan {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Status and body of `GET path` on `addr`.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {addr}{path}: no answer in {WAIT:?}"))
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {addr}{path}: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Run an `ExecStartPre=`/`ExecReload=` line to its end; it must succeed.
async fn run_to_end(host: &mut Host, unit: &str, line: &str, env: &HashMap<&str, String>) {
    let mut process = Proc::spawn(&format!("{unit}: {line}"), exec_command(host, line, env));
    let status = process.exit().await;
    process.closed().await;
    assert!(
        status.success(),
        "{unit}: {line}: {status}; output:\n{}",
        process.output()
    );
}

/// The unit's directories that systemd makes before starting it.
fn make_unit_directories(host: &Host, unit: &[(String, String, String)]) {
    for (key, base) in [
        ("StateDirectory", "/var/lib/"),
        ("RuntimeDirectory", "/run/"),
    ] {
        for name in directive(unit, key) {
            std::fs::create_dir_all(host.path(&format!("{base}{name}"))).expect("mkdir");
        }
    }
}

/// Every `ExecStartPre=` line (each must succeed) and then the `ExecStart=` line of `unit`,
/// whose process is returned once it says `ready`.
async fn start_unit(
    host: &mut Host,
    name: &str,
    ready: &str,
) -> (Vec<(String, String, String)>, Proc) {
    let unit = unit_file(&deploy().join("systemd").join(name));
    make_unit_directories(host, &unit);
    let env = HashMap::new();
    for line in directive(&unit, "ExecStartPre") {
        run_to_end(host, name, &line, &env).await;
    }
    let start = directive(&unit, "ExecStart");
    let [line] = start.as_slice() else {
        panic!("{name}: one ExecStart= expected, found {start:?}");
    };
    let process = Proc::spawn(&format!("{name}: {line}"), exec_command(host, line, &env));
    process.line(ready).await;
    (unit, process)
}

/// Stop a unit's main process as systemd does (`KillSignal=`): it must exit with success.
async fn stop_unit(unit: &[(String, String, String)], name: &str, mut process: Proc) {
    let kill = directive(unit, "KillSignal");
    let sig = kill.first().map(String::as_str).unwrap_or("SIGTERM");
    signal(process.pid(), sig.trim_start_matches("SIG"));
    let status = process.exit().await;
    assert!(
        status.success(),
        "{name}: {status} after {sig}; output:\n{}",
        process.output()
    );
}

/// Every unit file under deploy/systemd runs as written: its `ExecStartPre=` checks pass
/// with the example configs, its `ExecStart=` serves `/healthz` and stops cleanly on its
/// `KillSignal=`; the gateway taking its table from the control plane gets it from the control
/// plane started by its unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_units_start_serve_and_stop() {
    let units: Vec<String> = files(&deploy().join("systemd"), "service")
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(units, ["unitgate-control.service", "unitgate.service"]);
    let mut host = Host::new();
    host.install_configs("gateway.control-plane.example.yaml");

    let (control_unit, control) =
        start_unit(&mut host, "unitgate-control.service", "listening on").await;
    let api = host.addr("127.0.0.1:7070");
    assert_eq!(
        get(api, "/healthz").await.0,
        200,
        "the control plane's /healthz"
    );

    for example in ["gateway.control-plane.example.yaml", "gateway.example.yaml"] {
        host.install(
            "/etc/unitgate/gateway.yaml",
            &read(&deploy().join("gateway").join(example)),
        );
        let (unit, gateway) = start_unit(&mut host, "unitgate.service", "gateway serving").await;
        let admin = host.addr("127.0.0.1:9100");
        assert_eq!(get(admin, "/healthz").await.0, 200, "{example}: /healthz");
        let (status, body) = get(admin, "/readyz").await;
        assert_eq!(status, 200, "{example}: /readyz: {body}");
        stop_unit(&unit, "unitgate.service", gateway).await;
    }
    stop_unit(&control_unit, "unitgate-control.service", control).await;
}

/// `systemctl reload unitgate` as the unit file says, with the real binary: a config whose
/// listeners changed is refused and the running process keeps serving; otherwise a new
/// process takes the sockets over and the PID file (`PIDFile=`, systemd's main PID after the
/// reload) names it before the reload command returns; the old one drains and exits with
/// success, and the new one serves and stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_reload_hands_the_gateway_over_to_a_new_process() {
    let mut host = Host::new();
    host.install_configs("gateway.example.yaml");
    let example = read(&deploy().join("gateway/gateway.example.yaml"));
    let (unit, mut old) = start_unit(&mut host, "unitgate.service", "ready for an upgrade").await;
    let admin = host.addr("127.0.0.1:9100");
    let old_pid = old.pid();
    let pid_files = directive(&unit, "PIDFile");
    let [pid_file] = pid_files.as_slice() else {
        panic!("unitgate.service: one PIDFile= expected, found {pid_files:?}");
    };
    let pid_file = host.path(pid_file);
    let named = || {
        std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
            .trim()
            .parse::<u32>()
            .expect("a PID")
    };
    let reload = directive(&unit, "ExecReload");
    let (upgrade, checks) = reload.split_last().expect("ExecReload=");
    let env = HashMap::from([("MAINPID", old_pid.to_string())]);

    // A listener more: the upgrade cannot take it over; the reload fails, nothing changes.
    assert!(example.contains("  http: [\"0.0.0.0:8080\"]"));
    host.install(
        "/etc/unitgate/gateway.yaml",
        &example.replace(
            "  http: [\"0.0.0.0:8080\"]",
            "  http: [\"0.0.0.0:8080\", \"0.0.0.0:8081\"]",
        ),
    );
    for line in checks {
        run_to_end(&mut host, "unitgate.service", line, &env).await;
    }
    let mut refused = Proc::spawn("refused reload", exec_command(&mut host, upgrade, &env));
    let status = refused.exit().await;
    refused.closed().await;
    assert!(
        !status.success(),
        "a reload that cannot take over succeeded:\n{}",
        refused.output()
    );
    assert!(
        refused.output().contains("listens on other sockets"),
        "{}",
        refused.output()
    );
    assert_eq!(named(), old_pid, "the PID file names the serving process");
    assert_eq!(
        get(admin, "/readyz").await.0,
        200,
        "the old process still serves"
    );

    // The same listeners: the reload hands over.
    host.install("/etc/unitgate/gateway.yaml", &example);
    for line in checks {
        run_to_end(&mut host, "unitgate.service", line, &env).await;
    }
    let mut reloading = Proc::spawn("reload", exec_command(&mut host, upgrade, &env));
    let status = reloading.exit().await;
    assert!(
        status.success(),
        "reload: {status}; output:\n{}",
        reloading.output()
    );
    let new_pid = named();
    let mut orphan = Orphan(Some(new_pid));
    assert_ne!(new_pid, old_pid, "the PID file names the new process");
    let command_line =
        std::fs::read(format!("/proc/{new_pid}/cmdline")).expect("the new process runs");
    assert!(
        String::from_utf8_lossy(&command_line).contains("--upgrade"),
        "PID {new_pid} is not the new gateway"
    );
    reloading.line("took over the listeners").await;
    let status = old.exit().await;
    assert!(
        status.success(),
        "the old process: {status}; output:\n{}",
        old.output()
    );
    assert!(
        old.output().contains("a new process serves"),
        "{}",
        old.output()
    );
    assert_eq!(
        get(admin, "/healthz").await.0,
        200,
        "the new process's /healthz"
    );
    assert_eq!(
        get(admin, "/readyz").await.0,
        200,
        "the new process's /readyz"
    );

    // The new process stops as the unit stops its main process.
    signal(new_pid, "TERM");
    reloading.closed().await;
    orphan.0 = None;
    let output = reloading.output();
    assert!(output.contains("stopping: draining"), "{output}");
    assert!(!output.contains("\"ERROR\""), "{output}");
}

// ---- The commands in the documentation ---------------------------------------------------------

/// A command from a `sh` code block: file, line, the command as written.
struct DocCommand {
    at: String,
    text: String,
}

/// Every command in the `sh` code blocks of README.md and docs/*.md (a line, with its
/// continuation lines; comment lines left out).
fn doc_commands() -> Vec<DocCommand> {
    let mut docs = vec![repo().join("README.md")];
    docs.extend(files(&repo().join("docs"), "md"));
    let mut out = Vec::new();
    for doc in docs {
        let name = doc
            .strip_prefix(repo())
            .unwrap_or(&doc)
            .display()
            .to_string();
        let mut in_block = false;
        let mut pending: Option<(usize, String)> = None;
        for (n, line) in read(&doc).lines().enumerate() {
            if let Some(fence) = line.trim_start().strip_prefix("```") {
                in_block = !in_block && matches!(fence.trim(), "sh" | "bash" | "shell");
                continue;
            }
            if !in_block {
                continue;
            }
            let (start, mut text) = pending.take().unwrap_or((n + 1, String::new()));
            if text.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with('#')) {
                continue;
            }
            if let Some(head) = line.strip_suffix('\\') {
                text.push_str(head);
                pending = Some((start, text));
                continue;
            }
            text.push_str(line);
            out.push(DocCommand {
                at: format!("{name}:{start}"),
                text,
            });
        }
    }
    out
}

/// Commands that are not run, each with why: they serve until stopped, or need a server, a
/// cluster or systemd. Every entry must still match some command.
const NOT_RUN: [(&str, &str); 11] = [
    ("unitgate-demo", "serves until stopped (the demo)"),
    ("curl ", "asks a running server (the demo, a control plane)"),
    (
        "source .unitgate-demo/env",
        "reads the running demo's tokens",
    ),
    (
        "unitgate --config",
        "serves, or takes over a running gateway: systemd_units_start_serve_and_stop and systemd_reload_hands_the_gateway_over_to_a_new_process run both",
    ),
    (
        "unitgate-control --config",
        "serves: systemd_units_start_serve_and_stop runs it",
    ),
    (
        "unitctl (status|table|flip|flip-confirm|flip-cancel|flip-extend|flip-resolve|flip-show|evacuate|restore|audit|gateway-forget)",
        "asks a control plane (the e2e tests run these against one)",
    ),
    (
        "unitctl route --live",
        "asks a control plane (unitctl's remote tests run it against one)",
    ),
    (
        "unitctl diff --live",
        "asks a control plane (unitctl's remote tests run it against one)",
    ),
    ("scripts/test", "is the test suite itself"),
    ("kubectl ", "needs a Kubernetes cluster"),
    ("systemctl ", "needs systemd as PID 1"),
];

/// Exit codes other than 0 that a command is documented to give.
const EXIT_CODES: [(&str, i32); 1] = [("unitctl diff ", 1)]; // changes found, like diff(1)

/// The entry of [`NOT_RUN`] that applies to `command` (blanks collapsed), if any.
fn not_run(command: &str) -> Option<usize> {
    NOT_RUN.iter().position(|(prefix, _)| {
        match prefix
            .strip_prefix("unitctl (")
            .and_then(|p| p.strip_suffix(')'))
        {
            Some(subcommands) => subcommands.split('|').any(|sub| {
                command
                    .strip_prefix("unitctl ")
                    .and_then(|rest| rest.split_whitespace().next())
                    == Some(sub)
            }),
            None => command.starts_with(prefix),
        }
    })
}

/// A command from the docs as it runs here: `cargo run ... --bin NAME -- ARGS` is the built
/// binary `NAME ARGS` (the test does not build), blanks collapsed.
fn as_run(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.first() == Some(&"cargo") && words.get(1) == Some(&"run") {
        let bin = words
            .windows(2)
            .find(|w| w[0] == "--bin")
            .map(|w| w[1])
            .unwrap_or_else(|| panic!("{text}: cargo run without --bin"));
        let args = words
            .iter()
            .position(|w| *w == "--")
            .map(|at| &words[at + 1..])
            .unwrap_or_default();
        return std::iter::once(bin)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
    }
    words.join(" ")
}

/// The files the docs' commands name, in the directory they run in: the repository's deploy/,
/// a control-plane config (`control.yaml`), tables (`table.yaml`, `old.yaml`, and `new.yaml`
/// moving u03 from sh to sz) and `users.txt`; /etc/unitgate/gateway.yaml is the example.
fn doc_fixtures(host: &mut Host, dir: &Path) {
    std::os::unix::fs::symlink(deploy(), dir.join("deploy")).expect("symlink deploy");
    host.install_configs("gateway.example.yaml");
    std::fs::copy(
        host.path("/etc/unitgate-control/control.yaml"),
        dir.join("control.yaml"),
    )
    .expect("control.yaml");
    let table = read(&deploy().join("examples/three-regions.yaml"));
    let moved = "  - name: u03\n    slots: [[3334, 4999]]\n    region: sh\n    standby: sz\n";
    assert!(
        table.contains(moved) && table.contains("\nversion: 1\n"),
        "three-regions.yaml changed: update this fixture"
    );
    let new = table
        .replace(
            moved,
            "  - name: u03\n    slots: [[3334, 4999]]\n    region: sz\n    standby: sh\n",
        )
        .replace("\nversion: 1\n", "\nversion: 2\n");
    for (name, text) in [
        ("table.yaml", &table),
        ("old.yaml", &table),
        ("new.yaml", &new),
    ] {
        std::fs::write(dir.join(name), text).expect("table");
    }
    let users: String = (0..2000).map(|n| format!("{}\n", n * 5)).collect();
    std::fs::write(dir.join("users.txt"), users).expect("users");
}

/// Run `command` with `sh` in `dir`, the built binaries first on PATH, paths mapped to
/// `host`; returns its exit code and output.
fn run_doc_command(host: &mut Host, dir: &Path, command: &str) -> (Option<i32>, String) {
    let path = format!(
        "{}:{}",
        host.bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = host.map(command);
    let output = Command::new("sh")
        .args(["-c", &script])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("UNITGATE_SERVER")
        .env_remove("UNITGATE_TOKEN")
        .env_remove("UNITGATE_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("sh: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// Every command in the docs' code blocks that needs no server runs as written and succeeds
/// (or gives the exit code it is documented to give); the others are listed in [`NOT_RUN`]
/// with the reason.
#[test]
fn documented_commands_run() {
    let commands = doc_commands();
    let mut host = Host::new();
    let dir = tempfile::tempdir().expect("tempdir");
    doc_fixtures(&mut host, dir.path());
    let mut used = [false; NOT_RUN.len()];
    let mut ran = 0;
    let mut failures = Vec::new();
    for DocCommand { at, text } in &commands {
        let command = as_run(text);
        if let Some(entry) = not_run(&command) {
            used[entry] = true;
            eprintln!("{at}: not run ({}): {command}", NOT_RUN[entry].1);
            continue;
        }
        let expected = EXIT_CODES
            .iter()
            .find(|(prefix, _)| command.starts_with(prefix))
            .map_or(0, |(_, code)| *code);
        let (code, output) = run_doc_command(&mut host, dir.path(), &command);
        eprintln!("{at}: ran: {command} -> {code:?}");
        ran += 1;
        if code != Some(expected) {
            failures.push(format!(
                "{at}: {command}\n  exit {code:?}, expected {expected}; output:\n{}",
                output.lines().take(20).collect::<Vec<_>>().join("\n")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "documented commands that fail:\n{}",
        failures.join("\n")
    );
    for (entry, used) in NOT_RUN.iter().zip(used) {
        assert!(
            used,
            "NOT_RUN entry {:?} matches no documented command: remove it",
            entry.0
        );
    }
    assert!(
        ran >= 10,
        "only {ran} documented commands ran: is the extraction broken?"
    );
}

/// The certificate recipe in docs/control-plane.md ("Deploying"), run as written, makes
/// files the control plane serves https with, and a chain that verifies for the name
/// gateways use in deploy/kubernetes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_control_plane_certificate_works() {
    let recipe: Vec<DocCommand> = doc_commands()
        .into_iter()
        .filter(|c| c.at.starts_with("docs/control-plane.md:") && c.text.starts_with("openssl "))
        .collect();
    assert!(
        recipe.len() >= 3,
        "no certificate recipe in docs/control-plane.md"
    );
    // deploy/kubernetes/control-plane.yaml's comment holds the same commands.
    let mut in_manifest: Vec<String> = Vec::new();
    for line in read(&deploy().join("kubernetes/control-plane.yaml")).lines() {
        let Some(text) = line.strip_prefix("#   ") else {
            continue;
        };
        match in_manifest.last_mut() {
            Some(last) if last.ends_with('\\') => {
                last.pop();
                last.push_str(text);
            }
            _ if text.starts_with("openssl req") || text.starts_with("openssl x509") => {
                in_manifest.push(text.to_owned());
            }
            _ => {}
        }
    }
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(
        in_manifest.iter().map(|c| words(c)).collect::<Vec<_>>(),
        recipe.iter().map(|c| words(&c.text)).collect::<Vec<_>>(),
        "the certificate recipe differs between control-plane.yaml and docs/control-plane.md"
    );
    let mut host = Host::new();
    let dir = tempfile::tempdir().expect("tempdir");
    for DocCommand { at, text } in &recipe {
        let (code, output) = run_doc_command(&mut host, dir.path(), text);
        assert_eq!(code, Some(0), "{at}: {text}:\n{output}");
    }
    let (cert, key, ca) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    let listen = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let config = dir.path().join("control.yaml");
    let token = "deploy-files-test-admin-token-0123456789abcdef";
    std::fs::write(
        &config,
        format!(
            "listen: \"{listen}\"\ntls: {{ cert: {}, key: {} }}\nstore: {{ file: {{ dir: {} }} }}\ntokens:\n  - {{ name: admin, role: admin, sha256: {} }}\n",
            cert.display(),
            key.display(),
            dir.path().join("store").display(),
            control_plane::auth::hash_token(token),
        ),
    )
    .expect("config");
    let control = unitgate_e2e::bin("unitgate-control");
    let check = Command::new(&control)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("check");
    assert!(
        check.status.success(),
        "check with the recipe's files: {check:?}"
    );
    let mut command = Command::new(&control);
    command.arg("--config").arg(&config);
    let mut server = Proc::spawn("unitgate-control (https)", command);
    server.line("listening on").await;
    // The name gateways use (deploy/kubernetes/gateway-*.yaml), verified against ca.crt alone.
    let name = "unitgate-control.unitgate.svc";
    let verify = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args(["s_client", "-brief", "-verify_return_error", "-connect"])
            .arg(listen.to_string())
            .args(["-servername", name, "-verify_hostname", name, "-CAfile"])
            .arg(&ca)
            .stdin(Stdio::null())
            .output()
            .expect("openssl s_client")
    })
    .await
    .expect("s_client");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.contains("Verification: OK"),
        "s_client: {}\n{said}",
        verify.status
    );
    signal(server.pid(), "TERM");
    assert!(server.exit().await.success(), "{}", server.output());
}
