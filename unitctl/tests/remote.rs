//! `unitctl`'s remote commands, run as a process against a control plane on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use control_plane::ControlPlane;
use control_plane::auth::{hash_token, new_token};
use control_plane::config::ControlConfig;
use control_plane::server::Server;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/three-regions.yaml")
}

struct Plane {
    _dir: tempfile::TempDir,
    _cp: Arc<ControlPlane>,
    server: Server,
    operator: String,
    admin: String,
    path: PathBuf,
}

async fn plane() -> Plane {
    let dir = tempfile::tempdir().expect("tempdir");
    let (operator, admin) = (new_token(), new_token());
    let text = format!(
        "listen: 127.0.0.1:0\nstore: {{ file: {{ dir: {} }} }}\ninitial_table: {}\ntokens:\n  - {{ name: ops, role: operator, sha256: {} }}\n  - {{ name: root, role: admin, sha256: {} }}\n",
        dir.path().join("store").display(),
        example().display(),
        hash_token(&operator),
        hash_token(&admin)
    );
    let config = ControlConfig::parse(&text, "test").expect("config");
    let cp = ControlPlane::open(config).await.expect("control plane");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let server = Server::start(cp.clone(), listener, None).expect("serve");
    Plane {
        path: dir.path().to_owned(),
        _dir: dir,
        _cp: cp,
        server,
        operator,
        admin,
    }
}

impl Plane {
    /// Run unitctl (blocking, off the runtime's threads) with the server and `token` in the
    /// environment, as `source .unitgate-demo/env` would set them.
    async fn unitctl(&self, token: &str, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_unitctl"));
        command
            .args(args)
            .env("UNITGATE_SERVER", format!("http://{}", self.server.addr))
            .env("UNITGATE_TOKEN", token)
            .stdin(Stdio::null());
        tokio::task::spawn_blocking(move || command.output().expect("unitctl runs"))
            .await
            .expect("joined")
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_plan_apply_flip_and_audit() {
    let p = plane().await;
    let out = p.unitctl(&p.operator, &["status"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("table version 1"), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("u01*") && l.contains("hz") && l.contains("active")),
        "{shown}"
    );
    let out = p
        .unitctl(&p.operator, &["status", "--output", "json"])
        .await;
    let status: control_api::Status = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status.units.len(), 6);

    // Plan: what moves; a broken table lists every problem with its line.
    let example = std::fs::read_to_string(example()).expect("example");
    let moved = write(
        &p.path,
        "moved.yaml",
        &example.replace(
            "slots: [[1667, 3333]]\n    region: hz\n    standby: sh",
            "slots: [[1667, 3333]]\n    region: sh\n    standby: hz",
        ),
    );
    let out = p.unitctl(&p.operator, &["table", "plan", &moved]).await;
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("would be stored as version 2"), "{shown}");
    assert!(
        shown.contains("unit u02 changed: region hz -> sh"),
        "{shown}"
    );
    assert!(shown.contains("changing region: 1667"), "{shown}");
    let broken = write(
        &p.path,
        "broken.yaml",
        &example.replace(
            "region: sz\n    standby: hz\n    state: active",
            "region: mars\n    standby: hz\n    state: active",
        ),
    );
    let out = p.unitctl(&p.operator, &["table", "plan", &broken]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("broken.yaml:62:"),
        "the problem's line: {}",
        text(&out)
    );

    // Apply: an operator may not; an admin must confirm (no terminal here: --yes).
    let out = p
        .unitctl(&p.operator, &["table", "apply", &moved, "--yes"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("403"), "{}", text(&out));
    let out = p.unitctl(&p.admin, &["table", "apply", &moved]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--yes"), "{}", text(&out));
    let out = p
        .unitctl(
            &p.admin,
            &["table", "apply", &moved, "--yes", "--reason", "rebalance"],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("stored as version 2"), "{}", text(&out));

    // A planned flip, followed step by step.
    let out = p
        .unitctl(
            &p.operator,
            &[
                "flip",
                "u03",
                "--to",
                "sz",
                "--delay-s",
                "0",
                "--reason",
                "drill",
                "--wait",
            ],
        )
        .await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let steps = [
        "freeze",
        "converge_freeze",
        "replication",
        "switch",
        "converge_switch",
        "unfreeze",
        "converge_unfreeze",
    ];
    let mut at = 0;
    for step in steps {
        let found = shown[at..]
            .find(&format!("  {step} "))
            .unwrap_or_else(|| panic!("{step} after byte {at}: {shown}"));
        at += found + 1;
    }
    assert!(shown.contains(": succeeded"), "{shown}");
    let out = p
        .unitctl(
            &p.operator,
            &["flip", "u04", "--to", "hz", "--emergency", "--wait"],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("emergency_switch"), "{}", text(&out));

    let out = p.unitctl(&p.operator, &["audit"]).await;
    let shown = text(&out);
    assert!(
        shown.contains("table.put") && shown.contains("[rebalance]"),
        "{shown}"
    );
    assert!(
        shown.contains("flip.start") && shown.contains("flip.end"),
        "{shown}"
    );
    let out = p.unitctl(&p.operator, &["status"]).await;
    assert!(text(&out).contains("table version 6"), "{}", text(&out));
}

#[test]
fn remote_commands_need_a_server_and_a_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_unitctl"))
        .arg("status")
        .env_remove("UNITGATE_SERVER")
        .env_remove("UNITGATE_TOKEN")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("UNITGATE_SERVER"), "{}", text(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_unitctl"))
        .args(["status", "--server", "http://127.0.0.1:1"])
        .env_remove("UNITGATE_TOKEN")
        .output()
        .expect("runs");
    assert!(text(&out).contains("UNITGATE_TOKEN"), "{}", text(&out));
}
