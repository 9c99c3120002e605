//! `unitctl`'s remote commands, run as a process against a control plane on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

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
    /// A gateway token bound to the gateways `hz-*` of region hz.
    gateway: String,
    path: PathBuf,
}

async fn plane() -> Plane {
    plane_with_store(|_| {}).await
}

/// A control plane whose file store directory `seed` has filled in before it opens.
async fn plane_with_store(seed: impl FnOnce(&Path)) -> Plane {
    plane_with(seed, None).await
}

/// A control plane whose store `seed` filled in, serving https with the PEM certificate and
/// key `tls` when given.
async fn plane_with(seed: impl FnOnce(&Path), tls: Option<(&Path, &Path)>) -> Plane {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(&dir.path().join("store"));
    let (operator, admin, gateway) = (new_token(), new_token(), new_token());
    let text = format!(
        "listen: 127.0.0.1:0\nstore: {{ file: {{ dir: {} }} }}\ninitial_table: {}\ntokens:\n  - {{ name: ops, role: operator, sha256: {} }}\n  - {{ name: root, role: admin, sha256: {} }}\n  - {{ name: gw-hz, role: gateway, gateway_id: \"hz-*\", region: hz, sha256: {} }}\n",
        dir.path().join("store").display(),
        example().display(),
        hash_token(&operator),
        hash_token(&admin),
        hash_token(&gateway)
    );
    let config = ControlConfig::parse(&text, "test").expect("config");
    let cp = ControlPlane::open(config).await.expect("control plane");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let tls = tls.map(|(cert, key)| control_api::tls::server_config(cert, key).expect("TLS"));
    let server = Server::start(cp.clone(), listener, tls).expect("serve");
    Plane {
        path: dir.path().to_owned(),
        _dir: dir,
        _cp: cp,
        server,
        operator,
        admin,
        gateway,
    }
}

impl Plane {
    /// Run unitctl (blocking, off the runtime's threads) with the server and `token` in the
    /// environment, as `source .unitgate-demo/env` would set them.
    async fn unitctl(&self, token: &str, args: &[&str]) -> Output {
        let mut command = unitctl_command(args);
        command
            .env("UNITGATE_SERVER", format!("http://{}", self.server.addr))
            .env("UNITGATE_TOKEN", token);
        run(command).await
    }
}

impl Plane {
    /// An API client with `token`, for what the tests check behind unitctl's back.
    fn client(&self, token: &str) -> control_api::Client {
        control_api::Client::new(&format!("http://{}", self.server.addr), Some(token), None)
            .expect("client")
            .with_timeout(Duration::from_secs(10))
    }

    async fn status(&self) -> control_api::Status {
        self.client(&self.operator).status().await.expect("status")
    }

    async fn table(&self) -> control_api::StoredTable {
        self.client(&self.operator).table().await.expect("table")
    }

    async fn audit(&self) -> Vec<control_api::AuditEntry> {
        self.client(&self.operator)
            .audit(None)
            .await
            .expect("audit")
    }
}

/// `unitctl ARGS` with no server, token or CA from the test's own environment.
/// `unitctl flip UNIT --to sz` as a drill, planned, its replication check passed at once,
/// followed to its end.
fn planned_flip(unit: &str) -> [&str; 9] {
    [
        "flip",
        unit,
        "--to",
        "sz",
        "--reason",
        "drill",
        "--delay-s",
        "0",
        "--wait",
    ]
}

fn unitctl_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_unitctl"));
    command.args(args).stdin(Stdio::null());
    for name in [
        "UNITGATE_SERVER",
        "UNITGATE_TOKEN",
        "UNITGATE_TOKEN_FILE",
        "UNITGATE_CA",
    ] {
        command.env_remove(name);
    }
    command
}

/// Run `command` to its end, off the runtime's threads.
async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("unitctl runs"))
        .await
        .expect("joined")
}

fn unit<'s>(status: &'s control_api::Status, name: &str) -> &'s control_api::UnitStatus {
    status
        .units
        .iter()
        .find(|u| u.name == name)
        .unwrap_or_else(|| panic!("unit {name} in {status:?}"))
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
    // Valid, but an apply would be refused (it moves a unit without a flip): a finding.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
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

    // Apply (a change that moves no unit: a standby): an operator may not; an admin must
    // confirm (no terminal here: --yes).
    let edited = write(
        &p.path,
        "edited.yaml",
        &example.replace(
            "slots: [[6667, 8333]]\n    region: sz\n    standby: hz",
            "slots: [[6667, 8333]]\n    region: sz\n    standby: sh",
        ),
    );
    let out = p
        .unitctl(&p.operator, &["table", "apply", &edited, "--yes"])
        .await;
    assert_eq!(out.status.code(), Some(4), "a role refused: {}", text(&out));
    assert!(text(&out).contains("403"), "{}", text(&out));
    let out = p.unitctl(&p.admin, &["table", "apply", &edited]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--yes"), "{}", text(&out));
    let out = p
        .unitctl(
            &p.admin,
            &[
                "table",
                "apply",
                &edited,
                "--yes",
                "--reason",
                "rééquilibrage 再平衡",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("stored as version 2"), "{}", text(&out));
    // A reason in any language is stored as written.
    let stored = p.client(&p.admin).table().await.expect("table");
    assert_eq!(stored.reason.as_deref(), Some("rééquilibrage 再平衡"));
    assert!(
        !text(&out).contains("REFUSED"),
        "nothing moves: {}",
        text(&out)
    );

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
            &[
                "flip",
                "u04",
                "--to",
                "hz",
                "--reason",
                "drill",
                "--emergency",
                "--wait",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("emergency_switch"), "{}", text(&out));

    let out = p.unitctl(&p.operator, &["audit"]).await;
    let shown = text(&out);
    assert!(
        shown.contains("table.put") && shown.contains("rééquilibrage 再平衡"),
        "{shown}"
    );
    assert!(
        shown.contains("flip.start") && shown.contains("flip.end"),
        "{shown}"
    );
    let out = p.unitctl(&p.operator, &["status"]).await;
    assert!(text(&out).contains("table version 6"), "{}", text(&out));
}

/// Set the standby of unit `name` in a table fetched as JSON: an edit that moves no unit.
fn with_standby(table: &serde_json::Value, name: &str, standby: &str) -> String {
    let mut table = table.clone();
    let units = table["units"].as_array_mut().expect("units");
    let unit = units
        .iter_mut()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("unit {name}"));
    unit["standby"] = standby.into();
    serde_json::to_string_pretty(&table).expect("JSON")
}

/// `table get` writes the version it fetched into the table; `table apply` sends that version
/// as If-Match, so an edit of a version that a flip replaced meanwhile is refused (409), with
/// what to do, and changes nothing; the same edit redone on a fresh `table get` is stored.
#[tokio::test(flavor = "multi_thread")]
async fn an_edit_of_a_replaced_version_is_refused_as_stale() {
    let p = plane().await;
    let out = p.unitctl(&p.operator, &["table", "get"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let fetched: serde_json::Value = serde_json::from_slice(&out.stdout).expect("table JSON");
    assert_eq!(fetched["version"], 1, "{fetched}");
    let old = write(&p.path, "old.json", &with_standby(&fetched, "u05", "sh"));

    // Meanwhile, a flip stores new versions.
    let out = p.unitctl(&p.operator, &planned_flip("u03")).await;
    assert!(out.status.success(), "{}", text(&out));
    let in_force = p.status().await.version;
    assert!(in_force > 1, "the flip stored versions");

    // The plan says the file is stale (exit 1: an apply would be refused); the apply is
    // refused and changes nothing.
    let out = p.unitctl(&p.operator, &["table", "plan", &old]).await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!(
            "STALE: it is an edit of version 1, but version {in_force} is in force"
        )) && shown.contains("409"),
        "{shown}"
    );
    // Planned as an edit of the version in force (`--base`, as `table apply` takes it), the
    // file is no longer stale: it would move u03 back without a flip, which is refused too.
    let base = in_force.to_string();
    let out = p
        .unitctl(&p.operator, &["table", "plan", &old, "--base", &base])
        .await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(!shown.contains("STALE"), "{shown}");
    assert!(shown.contains("unit u03: moves sz -> sh"), "{shown}");
    let out = p
        .unitctl(
            &p.admin,
            &["table", "apply", &old, "--yes", "--reason", "late"],
        )
        .await;
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("not applied: 409"), "{shown}");
    assert!(
        shown.contains(&format!("hint: {old} is an edit of version 1"))
            && shown.contains(&format!("unitctl table get > {old}")),
        "{shown}"
    );
    let status = p.status().await;
    assert_eq!(status.version, in_force, "nothing stored");
    assert_eq!(unit(&status, "u03").region, "sz", "the flip stands");
    assert_eq!(unit(&status, "u05").standby.as_deref(), Some("hz"));

    // Fetched again and redone, the edit is stored on top of the flip.
    let out = p.unitctl(&p.operator, &["table", "get"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let fetched: serde_json::Value = serde_json::from_slice(&out.stdout).expect("table JSON");
    assert_eq!(fetched["version"], in_force, "{fetched}");
    let redone = write(&p.path, "redone.json", &with_standby(&fetched, "u05", "sh"));
    let out = p
        .unitctl(&p.admin, &["table", "apply", &redone, "--yes"])
        .await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(!shown.contains("STALE"), "{shown}");
    assert!(
        shown.contains(&format!("stored as version {}", in_force + 1)),
        "{shown}"
    );
    let status = p.status().await;
    assert_eq!(status.version, in_force + 1);
    assert_eq!(unit(&status, "u03").region, "sz", "the flip is kept");
    assert_eq!(unit(&status, "u05").standby.as_deref(), Some("sh"));
}

/// A table that moves a unit to another region: the plan names the unit and says an apply
/// would be refused; the apply is refused (422) and changes nothing; with --force-moves it is
/// stored, marked forced on the version and in the audit log.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_that_moves_a_unit_is_refused_unless_forced() {
    let p = plane().await;
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
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("moves 1 unit(s) without a flip"), "{shown}");
    assert!(
        shown.contains("unit u02: moves hz -> sh: use a flip (unitctl flip u02 --to sh"),
        "{shown}"
    );
    assert!(
        shown.contains("an apply would be REFUSED (422 moves_units)")
            && shown.contains("--force-moves REASON"),
        "{shown}"
    );
    let out = p
        .unitctl(&p.operator, &["table", "plan", &moved, "--output", "json"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let plan: control_api::PlanResult = serde_json::from_slice(&out.stdout).expect("plan JSON");
    assert_eq!(plan.moves.len(), 1, "{:?}", plan.moves);
    assert_eq!(plan.moves[0].unit, "u02");
    assert_eq!(plan.moves[0].from.as_deref(), Some("hz"));
    assert_eq!(plan.moves[0].to.as_deref(), Some("sh"));
    assert!(!plan.moves[0].slots_change);
    assert!(
        plan.put_refused
            .as_deref()
            .is_some_and(|r| r.contains("u02")),
        "{:?}",
        plan.put_refused
    );

    // Without --force-moves: refused, nothing stored.
    let out = p
        .unitctl(&p.admin, &["table", "apply", &moved, "--yes"])
        .await;
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("not applied: 422"), "{shown}");
    assert!(shown.contains("unit u02: moves hz -> sh"), "{shown}");
    assert!(
        shown.contains("hint: move units with flips")
            && shown.contains("an admin adds --force-moves REASON"),
        "{shown}"
    );
    let stored = p.table().await;
    assert_eq!(stored.version, 1, "nothing stored");
    assert_eq!(stored.forced, None);
    assert_eq!(unit(&p.status().await, "u02").region, "hz");

    // With it: stored, and marked.
    let out = p
        .unitctl(
            &p.admin,
            &["table", "apply", &moved, "--yes", "--force-moves", "drill"],
        )
        .await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("stored as version 2 (forced: it moves units without a flip)"),
        "{shown}"
    );
    let stored = p.table().await;
    assert_eq!(stored.version, 2);
    assert_eq!(stored.forced.as_deref(), Some("drill"));
    assert_eq!(unit(&p.status().await, "u02").region, "sh");
    let audit = p.audit().await;
    let forced: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "table.put.forced")
        .collect();
    assert_eq!(forced.len(), 1, "{audit:#?}");
    assert_eq!(forced[0].actor, "root");
    assert_eq!(forced[0].outcome, control_api::AuditOutcome::Ok);
    assert_eq!(forced[0].version_after, Some(2));
    assert!(
        forced[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("drill")),
        "{:?}",
        forced[0]
    );
    assert!(
        audit.iter().any(|e| e.action == "table.put"
            && e.outcome == control_api::AuditOutcome::Refused
            && e.status == Some(422)),
        "the refused apply is audited: {audit:#?}"
    );
    let out = p.unitctl(&p.operator, &["table", "get"]).await;
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("(forced, moving units without a flip: drill)"),
        "{}",
        text(&out)
    );
}

/// `flip-resolve` on a unit with no lock sets its state in its region (a new version when
/// the state changes, none when it does not) and says that no lock was held.
#[tokio::test(flavor = "multi_thread")]
async fn flip_resolve_sets_the_state_of_an_unlocked_unit() {
    let p = plane().await;
    async fn resolve(p: &Plane, state: &str) -> Output {
        p.unitctl(
            &p.operator,
            &["flip-resolve", "u03", "--state", state, "--reason", "drill"],
        )
        .await
    }
    let out = resolve(&p, "write_frozen").await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("unit u03: active -> write_frozen in sh: stored as version 2"),
        "{shown}"
    );
    assert!(shown.contains("no lock was held on u03"), "{shown}");
    let status = p.status().await;
    assert_eq!(status.version, 2);
    let u03 = unit(&status, "u03");
    assert_eq!(
        (u03.region.as_str(), u03.state.as_str()),
        ("sh", "write_frozen")
    );
    assert_eq!(u03.locked, None);
    let out = p.unitctl(&p.operator, &["status"]).await;
    assert!(
        text(&out)
            .lines()
            .any(|l| l.starts_with("u03 ") && l.contains("write_frozen")),
        "{}",
        text(&out)
    );

    // The same state again: nothing to store.
    let out = resolve(&p, "write_frozen").await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("unit u03: already write_frozen in sh: no new version (version 2 in force)"),
        "{shown}"
    );
    assert_eq!(p.status().await.version, 2);

    let out = resolve(&p, "active").await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("unit u03: write_frozen -> active in sh: stored as version 3"),
        "{shown}"
    );
    let status = p.status().await;
    assert_eq!(status.version, 3);
    assert_eq!(unit(&status, "u03").state, "active");
    let audit = p.audit().await;
    assert_eq!(
        audit
            .iter()
            .filter(|e| e.action == "unit.resolve" && e.target == "u03")
            .count(),
        3,
        "{audit:#?}"
    );

    // An unknown unit, and no reason.
    let out = p
        .unitctl(
            &p.operator,
            &["flip-resolve", "u99", "--state", "active", "--reason", "x"],
        )
        .await;
    assert!(!out.status.success());
    assert!(text(&out).contains("404"), "{}", text(&out));
    let out = p
        .unitctl(&p.operator, &["flip-resolve", "u03", "--state", "active"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--reason"), "{}", text(&out));
}

/// A unit whose flip record was torn (and quarantined at start) is locked: `status` says so
/// and no flip starts on it; `flip-resolve` lifts the lock, says which, and flips work again.
#[tokio::test(flavor = "multi_thread")]
async fn flip_resolve_lifts_the_lock_of_a_lost_flip() {
    let p = plane_with_store(|store| {
        let flips = store.join("flips");
        std::fs::create_dir_all(&flips).expect("flips dir");
        std::fs::write(
            flips.join("ftorn.json"),
            r#"{"id": "ftorn", "unit": "u04", "from": "sh", "to": "sz", "mode": "plan"#,
        )
        .expect("torn record");
    })
    .await;
    let status = p.status().await;
    assert!(
        unit(&status, "u04").locked.is_some(),
        "the torn record locks u04: {status:?}"
    );
    let out = p.unitctl(&p.operator, &["status"]).await;
    let shown = text(&out);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("u04 ") && l.contains("LOCKED: ")),
        "{shown}"
    );
    assert!(shown.contains("unitctl flip-resolve UNIT"), "{shown}");
    let out = p.unitctl(&p.operator, &planned_flip("u04")).await;
    assert!(
        !out.status.success() && text(&out).contains("409"),
        "a locked unit does not flip: {}",
        text(&out)
    );

    let out = p
        .unitctl(
            &p.operator,
            &[
                "flip-resolve",
                "u04",
                "--state",
                "active",
                "--reason",
                "data checked",
            ],
        )
        .await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("unit u04: already active in sh: no new version (version 1 in force)"),
        "{shown}"
    );
    assert!(
        shown.contains("lifted the lock of lost flip ftorn"),
        "{shown}"
    );
    assert_eq!(unit(&p.status().await, "u04").locked, None);
    let out = p.unitctl(&p.operator, &planned_flip("u04")).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(unit(&p.status().await, "u04").region, "sz");
}

/// `gateway-forget` drops a gateway from the fleet; an unknown one is a 404.
#[tokio::test(flavor = "multi_thread")]
async fn gateway_forget_drops_a_gateway() {
    let p = plane().await;
    let report = control_api::GatewayReport {
        gateway: "hz-1".into(),
        region: "hz".into(),
        applied: 1,
        digest: None,
        rejected: None,
        leaving: false,
    };
    p.client(&p.gateway).report(&report).await.expect("report");
    let out = p.unitctl(&p.operator, &["status"]).await;
    assert!(text(&out).contains("hz-1"), "{}", text(&out));

    let out = p.unitctl(&p.operator, &["gateway-forget", "hz-1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("gateway hz-1 forgotten"),
        "{}",
        text(&out)
    );
    assert!(p.status().await.gateways.is_empty());
    let gateways = p.client(&p.operator).gateways().await.expect("gateways");
    assert!(gateways.is_empty(), "{gateways:?}");

    let out = p.unitctl(&p.operator, &["gateway-forget", "hz-1"]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("404"), "{}", text(&out));
    let out = p.unitctl(&p.operator, &["gateway-forget", "hz/1"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn remote_commands_need_a_server_and_a_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_unitctl"))
        .arg("status")
        .env_remove("UNITGATE_SERVER")
        .env_remove("UNITGATE_TOKEN")
        .env_remove("UNITGATE_TOKEN_FILE")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("UNITGATE_SERVER"), "{}", text(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_unitctl"))
        .args(["status", "--server", "http://127.0.0.1:1"])
        .env_remove("UNITGATE_TOKEN")
        .env_remove("UNITGATE_TOKEN_FILE")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("UNITGATE_TOKEN"), "{}", text(&out));
}

/// stdout as JSON of type `T`: the whole of it, nothing else beside.
fn parse<T: serde::de::DeserializeOwned>(output: &Output) -> T {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not the JSON expected ({e}): {}", text(output)))
}

/// Report gateway `id` of region hz to the control plane, as a gateway would.
async fn report_gateway(p: &Plane, id: &str) {
    let report = control_api::GatewayReport {
        gateway: id.into(),
        region: "hz".into(),
        applied: 1,
        digest: None,
        rejected: None,
        leaving: false,
    };
    p.client(&p.gateway).report(&report).await.expect("report");
}

/// `--output json` of the commands that change things: stdout is the control plane's answer
/// (or the documented object) and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn json_output_of_flips_signals_apply_resolve_and_forget() {
    let p = plane().await;

    // A flip that waits for a confirmation: accepted, confirmed, followed to its end.
    let out = p
        .unitctl(
            &p.operator,
            &[
                "flip",
                "u03",
                "--to",
                "sz",
                "--reason",
                "drill",
                "--confirm",
                "--output",
                "json",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let accepted: control_api::FlipAccepted = parse(&out);
    assert!(accepted.location.contains(&accepted.id), "{accepted:?}");
    let out = p
        .unitctl(
            &p.operator,
            &["flip-confirm", &accepted.id, "--output", "json"],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let answer: serde_json::Value = parse(&out);
    assert_eq!(answer["id"], accepted.id.as_str(), "{answer}");
    assert_eq!(answer["signal"], "confirm", "{answer}");
    let out = p
        .unitctl(
            &p.operator,
            &["flip-show", &accepted.id, "--wait", "--output", "json"],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let record: control_api::FlipRecord = parse(&out);
    assert_eq!(
        record.state,
        control_api::FlipState::Succeeded,
        "{record:?}"
    );

    // --wait: the flip's record once it ended.
    let out = p
        .unitctl(
            &p.operator,
            &[
                "flip",
                "u04",
                "--to",
                "hz",
                "--reason",
                "drill",
                "--emergency",
                "--wait",
                "--output",
                "json",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let record: control_api::FlipRecord = parse(&out);
    assert_eq!(
        (record.unit.as_str(), record.to.as_str(), record.state),
        ("u04", "hz", control_api::FlipState::Succeeded),
        "{record:?}"
    );

    // A cancelled flip rolls back: its record says so, and the exit code is 1.
    let out = p
        .unitctl(
            &p.operator,
            &[
                "flip",
                "u05",
                "--to",
                "hz",
                "--reason",
                "drill",
                "--confirm",
                "--output",
                "json",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let accepted: control_api::FlipAccepted = parse(&out);
    let out = p
        .unitctl(
            &p.operator,
            &["flip-cancel", &accepted.id, "--output", "json"],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let answer: serde_json::Value = parse(&out);
    assert_eq!(answer["signal"], "cancel", "{answer}");
    let out = p
        .unitctl(
            &p.operator,
            &["flip-show", &accepted.id, "--wait", "--output", "json"],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let record: control_api::FlipRecord = parse(&out);
    assert_eq!(
        record.state,
        control_api::FlipState::RolledBack,
        "{record:?}"
    );
    assert_eq!(unit(&p.status().await, "u05").region, "sz");

    // table apply: the plan and the version stored; an invalid table: the plan alone, exit 1.
    let out = p.unitctl(&p.operator, &["table", "get"]).await;
    let fetched: serde_json::Value = parse(&out);
    let edited = write(&p.path, "edited.json", &with_standby(&fetched, "u06", "sh"));
    let out = p
        .unitctl(
            &p.admin,
            &["table", "apply", &edited, "--yes", "--output", "json"],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let applied: serde_json::Value = parse(&out);
    let in_force = p.status().await.version;
    assert_eq!(applied["stored"]["version"], in_force, "{applied}");
    let plan: control_api::PlanResult =
        serde_json::from_value(applied["plan"].clone()).expect("the plan");
    assert!(plan.valid && plan.next_version == in_force, "{plan:?}");
    let example = std::fs::read_to_string(example()).expect("example");
    let broken = write(
        &p.path,
        "broken.yaml",
        &example.replace(
            "region: sz\n    standby: hz",
            "region: mars\n    standby: hz",
        ),
    );
    let out = p
        .unitctl(
            &p.admin,
            &["table", "apply", &broken, "--yes", "--output", "json"],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let refused: serde_json::Value = parse(&out);
    assert_eq!(refused["plan"]["valid"], false, "{refused}");
    assert!(refused.get("stored").is_none(), "{refused}");
    assert_eq!(p.status().await.version, in_force, "nothing stored");

    // flip-resolve and gateway-forget.
    let out = p
        .unitctl(
            &p.operator,
            &[
                "flip-resolve",
                "u02",
                "--state",
                "write_frozen",
                "--reason",
                "drill",
                "--output",
                "json",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let resolved: control_api::ResolveResult = parse(&out);
    assert_eq!(
        (resolved.unit.as_str(), resolved.version),
        ("u02", in_force + 1)
    );
    report_gateway(&p, "hz-1").await;
    let out = p
        .unitctl(&p.operator, &["gateway-forget", "hz-1", "--output", "json"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let forgotten: serde_json::Value = parse(&out);
    assert_eq!(
        forgotten,
        serde_json::json!({"gateway": "hz-1", "forgotten": true})
    );

    // status and audit, for completeness.
    let out = p
        .unitctl(&p.operator, &["status", "--output", "json"])
        .await;
    let status: control_api::Status = parse(&out);
    assert_eq!(status.version, in_force + 1);
    let out = p.unitctl(&p.operator, &["audit", "--output", "json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let audit: Vec<control_api::AuditEntry> = parse(&out);
    assert!(
        audit.iter().any(|e| e.action == "flip.cancel"),
        "{audit:#?}"
    );
}

/// The byte column at which `name` starts in `header`.
fn column(header: &str, name: &str) -> usize {
    header
        .find(name)
        .unwrap_or_else(|| panic!("column {name} in {header:?}"))
}

/// `line` has a value starting exactly at byte column `at`.
fn starts_at(line: &str, at: usize) -> bool {
    line.len() > at && line.as_bytes()[at] != b' ' && (at == 0 || line.as_bytes()[at - 1] == b' ')
}

/// `audit` is a table: a header row, columns aligned, times in UTC; `status` too.
#[tokio::test(flavor = "multi_thread")]
async fn audit_and_status_are_aligned_tables() {
    let p = plane().await;
    let out = p
        .unitctl(
            &p.operator,
            &[
                "flip-resolve",
                "u03",
                "--state",
                "write_frozen",
                "--reason",
                "a reason with spaces",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = p.unitctl("not-a-token", &["status"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let out = p.unitctl(&p.operator, &["gateway-forget", "nobody"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    let out = p.unitctl(&p.operator, &["audit"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = shown.lines();
    let header = lines.next().expect("a header row");
    assert!(header.starts_with("TIME "), "{shown}");
    let columns: Vec<usize> = ["ACTOR", "ACTION", "TARGET", "OUTCOME"]
        .iter()
        .map(|name| column(header, name))
        .collect();
    let rows: Vec<&str> = lines.collect();
    assert!(rows.len() >= 2, "{shown}");
    for row in &rows {
        let time = &row[..column(header, "ACTOR")];
        assert!(
            time.trim_end().ends_with(" UTC") && time.starts_with("20"),
            "{row:?} in {shown}"
        );
        for &at in &columns {
            assert!(starts_at(row, at), "column at {at} of {row:?} in\n{shown}");
        }
    }
    let resolve = rows
        .iter()
        .find(|r| r.contains("unit.resolve"))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(resolve.contains("a reason with spaces"), "{shown}");
    assert!(
        rows.iter()
            .any(|r| r.contains("gateway.forget") && r.contains("refused") && r.contains("404")),
        "{shown}"
    );

    let out = p.unitctl(&p.operator, &["status"]).await;
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let header = shown
        .lines()
        .find(|l| l.starts_with("UNIT "))
        .unwrap_or_else(|| panic!("{shown}"));
    let region = column(header, "REGION");
    let units: Vec<&str> = shown
        .lines()
        .filter(|l| l.starts_with('u') && l.len() > 2)
        .collect();
    assert_eq!(units.len(), 6, "{shown}");
    for row in units {
        assert!(starts_at(row, region), "{row:?} in\n{shown}");
        assert_eq!(row, row.trim_end(), "no trailing spaces");
    }
}

/// Exit codes: a refused token 4, a refused role 4, a server nothing listens on 3, a refusal
/// of the request itself 1, bad usage 2.
#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_tell_refused_tokens_and_unreachable_servers() {
    let p = plane().await;
    let out = p.unitctl("not-a-token", &["status"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("401") && text(&out).contains("hint: check the token"),
        "{}",
        text(&out)
    );
    let out = p
        .unitctl(
            &p.operator,
            &["table", "apply", "/nonexistent.yaml", "--yes"],
        )
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = p
        .unitctl(&p.operator, &["flip-show", "fnothing-0000"])
        .await;
    assert_eq!(out.status.code(), Some(1), "404: {}", text(&out));
    assert!(text(&out).contains("404"), "{}", text(&out));

    // A port that nothing listens on any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = listener.local_addr().expect("addr");
    drop(listener);
    let mut command = unitctl_command(&["status", "--output", "json"]);
    command
        .env("UNITGATE_SERVER", format!("http://{gone}"))
        .env("UNITGATE_TOKEN", &p.operator);
    let out = run(command).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("cannot connect"), "{}", text(&out));
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", text(&out));
}

/// The token from a file: `UNITGATE_TOKEN_FILE` or `--token-file` (a final newline is no
/// part of it); a flag beats the environment; both variables at once is a usage error.
#[tokio::test(flavor = "multi_thread")]
async fn the_token_comes_from_a_file() {
    let p = plane().await;
    let server = format!("http://{}", p.server.addr);
    let good = write(&p.path, "operator.token", &format!("{}\n", p.operator));
    let bad = write(&p.path, "bad.token", "not-a-token\n");
    let with = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = unitctl_command(args);
        command.env("UNITGATE_SERVER", &server);
        for (name, value) in env {
            command.env(name, value);
        }
        run(command)
    };

    let out = with(&["status"], &[("UNITGATE_TOKEN_FILE", &good)]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("table version 1"), "{}", text(&out));
    let out = with(&["status", "--token-file", &good], &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = with(
        &["status", "--token-file", &good],
        &[("UNITGATE_TOKEN", "not-a-token")],
    )
    .await;
    assert!(out.status.success(), "the flag wins: {}", text(&out));
    let out = with(&["status"], &[("UNITGATE_TOKEN_FILE", &bad)]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let out = with(
        &["status"],
        &[
            ("UNITGATE_TOKEN_FILE", &good),
            ("UNITGATE_TOKEN", &p.operator),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("both UNITGATE_TOKEN and UNITGATE_TOKEN_FILE"),
        "{}",
        text(&out)
    );
    let missing = p.path.join("missing.token").display().to_string();
    let out = with(&["status", "--token-file", &missing], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("missing.token"), "{}", text(&out));
    let out = with(
        &["status", "--token-file", &good, "--token", &p.operator],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// An https control plane is verified against the system's trust store (here
/// `SSL_CERT_FILE`, which stands for it) without --ca; `--ca` or `UNITGATE_CA` adds a
/// private CA to it; a certificate nobody trusts is refused (exit 3).
#[tokio::test(flavor = "multi_thread")]
async fn https_is_verified_against_the_trust_store_and_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("key");
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let other_path = dir.path().join("other.pem");
    std::fs::write(&other_path, other.cert.pem()).expect("cert");
    let p = plane_with(|_| {}, Some((&cert_path, &key_path))).await;
    let url = format!("https://localhost:{}", p.server.addr.port());
    let with = |system: &Path, args: &[&str], env: &[(&str, &Path)]| {
        let mut command = unitctl_command(args);
        command
            .env("UNITGATE_SERVER", &url)
            .env("UNITGATE_TOKEN", &p.operator)
            .env("SSL_CERT_FILE", system)
            .env_remove("SSL_CERT_DIR");
        for (name, value) in env {
            command.env(name, value);
        }
        run(command)
    };

    let out = with(&cert_path, &["status"], &[]).await;
    assert!(
        out.status.success(),
        "trusted by the system: {}",
        text(&out)
    );
    let out = with(&other_path, &["status"], &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("TLS"), "{}", text(&out));
    let ca = cert_path.display().to_string();
    let out = with(&other_path, &["status", "--ca", &ca], &[]).await;
    assert!(out.status.success(), "--ca: {}", text(&out));
    let out = with(&other_path, &["status"], &[("UNITGATE_CA", &cert_path)]).await;
    assert!(out.status.success(), "UNITGATE_CA: {}", text(&out));
}

/// `route --live` explains a request against the table in force and names its version; after
/// a flip it shows the unit's new region. `diff --live FILE` compares FILE with the table in
/// force: nothing against the table `table get` printed, the change of an edited copy, and a
/// stale base. An unreachable control plane exits 3, a refused token 4.
#[tokio::test(flavor = "multi_thread")]
async fn route_and_diff_against_the_live_table() {
    let p = plane().await;
    let server = format!("http://{}", p.server.addr);
    // User 4321 is in slot 4321, of unit u03, in sh.
    let route = ["route", "--live", "--user", "4321", "--region", "hz"];
    let out = p.unitctl(&p.operator, &route).await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert_eq!(
        shown.lines().next(),
        Some(format!("table    version 1 (live, {server})").as_str()),
        "{shown}"
    );
    assert!(shown.contains("region   sh: entered hz"), "{shown}");
    let before = p.unitctl(&p.operator, &["table", "get"]).await;
    assert!(before.status.success(), "{}", text(&before));
    let before: serde_json::Value = parse(&before);

    let out = p.unitctl(&p.operator, &planned_flip("u03")).await;
    assert!(out.status.success(), "{}", text(&out));
    let in_force = p.status().await.version;
    assert!(in_force > 1, "the flip stored versions");

    let out = p.unitctl(&p.operator, &route).await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert_eq!(
        shown.lines().next(),
        Some(format!("table    version {in_force} (live, {server})").as_str()),
        "{shown}"
    );
    assert!(
        shown.contains("unit     u03 (active)") && shown.contains("region   sz: entered hz"),
        "{shown}"
    );
    let mut json = route.to_vec();
    json.extend(["--output", "json"]);
    let out = p.unitctl(&p.operator, &json).await;
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = parse(&out);
    assert_eq!(
        (&report["table_version"], &report["unit"], &report["region"]),
        (&in_force.into(), &"u03".into(), &"sz".into()),
        "{report}"
    );

    // Batch mode reads the same table.
    let users = write(&p.path, "users.txt", "4321\n4322\n1\n");
    let out = p
        .unitctl(&p.operator, &["route", "--live", "--batch", &users])
        .await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.starts_with(&format!(
            "3 requests, table version {in_force} (live, {server})"
        )),
        "{shown}"
    );
    let out = p
        .unitctl(
            &p.operator,
            &["route", "--live", "--batch", &users, "--output", "json"],
        )
        .await;
    let summary: serde_json::Value = parse(&out);
    assert_eq!(summary["table_version"], in_force, "{summary}");
    assert!(
        summary["by_region"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["region"] == "sz" && r["count"] == 2)),
        "{summary}"
    );

    // diff --live: the table in force as `table get` printed it changes nothing.
    let out = p.unitctl(&p.operator, &["table", "get"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let fetched: serde_json::Value = parse(&out);
    let same = write(&p.path, "same.json", &String::from_utf8_lossy(&out.stdout));
    let out = p.unitctl(&p.operator, &["diff", "--live", &same]).await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown.starts_with(&format!(
            "version {in_force} (live, {server}) -> {}",
            in_force + 1
        )),
        "{shown}"
    );
    assert!(shown.contains("no routing change"), "{shown}");
    assert!(!shown.contains("refused"), "{shown}");
    // The same content as an edit of an older version changes nothing, but an apply of it
    // would be refused (409): exit 1.
    let mut older = fetched.clone();
    older["version"] = (in_force - 1).into();
    let older = write(&p.path, "older.json", &older.to_string());
    let out = p.unitctl(&p.operator, &["diff", "--live", &older]).await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("no routing change") && shown.contains("409"),
        "{shown}"
    );

    // An edited copy: the change, exit 1; JSON names the version in force.
    let edited = write(&p.path, "edited.json", &with_standby(&fetched, "u05", "sh"));
    let out = p.unitctl(&p.operator, &["diff", "--live", &edited]).await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!("version {in_force} (live, {server})")),
        "{shown}"
    );
    assert!(shown.contains("u05: changed standby"), "{shown}");
    let out = p
        .unitctl(
            &p.operator,
            &["diff", "--live", &edited, "--output", "json"],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let diff: serde_json::Value = parse(&out);
    assert_eq!(diff["old_version"], in_force, "{diff}");
    assert_eq!(diff["new_version"], in_force + 1, "{diff}");
    assert_eq!(diff["units"][0]["unit"], "u05", "{diff}");
    assert_eq!(diff["refusals"], serde_json::json!([]), "{diff}");

    // The table as it was before the flip: u03 back in sh, and a stale base.
    let stale = write(&p.path, "stale.json", &before.to_string());
    let out = p
        .unitctl(&p.operator, &["diff", "--live", &stale, "--output", "json"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let diff: serde_json::Value = parse(&out);
    assert_eq!(
        diff["units"][0]["region"],
        serde_json::json!(["sz", "sh"]),
        "{diff}"
    );
    assert!(
        diff["refusals"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("is an edit of version 1") && m.contains("409")),
        "{diff}"
    );

    // A refused token: 4; a control plane that cannot be reached: 3.
    let out = p.unitctl("not-a-token", &route).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let out = p.unitctl("not-a-token", &["diff", "--live", &same]).await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = listener.local_addr().expect("addr");
    drop(listener);
    for args in [&route[..], &["diff", "--live", &same]] {
        let mut command = unitctl_command(args);
        command
            .env("UNITGATE_SERVER", format!("http://{gone}"))
            .env("UNITGATE_TOKEN", &p.operator);
        let out = run(command).await;
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
        assert!(out.stdout.is_empty(), "nothing on stdout: {}", text(&out));
    }
}

/// The flip id in `flip ID started...`, as the commands that start a flip print it first.
fn started_id(output: &Output) -> String {
    let shown = text(output);
    shown
        .lines()
        .find_map(|l| l.strip_prefix("flip ")?.split_once(" started")?.0.into())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no `flip ID started` line: {shown}"))
}

/// `evacuate sz --wait` moves both of sz's units to their standby hz as one flip (one version
/// per step for both, every step shown as it ends), and `restore sz --wait` brings them back
/// the same way; a second restore has nothing left to undo.
#[tokio::test(flavor = "multi_thread")]
async fn evacuate_and_restore_move_a_regions_units_as_one_flip() {
    let p = plane().await;
    let out = p
        .unitctl(
            &p.operator,
            &["evacuate", "sz", "--reason", "maintenance", "--wait"],
        )
        .await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let id = started_id(&out);
    assert!(
        shown.contains(&format!(
            "flip {id} started: evacuate:sz: 2 units (planned)\n  unit u05: sz -> hz\n  unit u06: sz -> hz\n"
        )),
        "{shown}"
    );
    for step in [
        "freeze",
        "converge_freeze",
        "switch",
        "unfreeze",
        "converge_unfreeze",
    ] {
        assert!(
            shown
                .lines()
                .any(|l| l.trim_start().starts_with(step) && l.contains(" ok ")),
            "step {step}: {shown}"
        );
    }
    assert!(
        shown.ends_with(&format!("flip {id}: succeeded\n")),
        "{shown}"
    );
    let status = p.status().await;
    assert_eq!(status.version, 4, "three versions for both units");
    for name in ["u05", "u06"] {
        assert_eq!(unit(&status, name).region, "hz", "{name}");
        assert_eq!(unit(&status, name).state, "active", "{name}");
    }
    let out = p.unitctl(&p.operator, &["status"]).await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for name in ["u05", "u06"] {
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with(name) && l.split_whitespace().nth(1) == Some("hz")),
            "{name} in hz: {shown}"
        );
    }

    // flip-show: the operation and every unit it moved.
    let out = p.unitctl(&p.operator, &["flip-show", &id]).await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.starts_with(&format!(
            "flip {id}: evacuate:sz: 2 units (Planned) by ops: succeeded\n  unit u05: sz -> hz\n  unit u06: sz -> hz\n"
        )),
        "{shown}"
    );

    let out = p
        .unitctl(
            &p.operator,
            &["restore", "sz", "--reason", "done", "--wait"],
        )
        .await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let back = started_id(&out);
    assert_ne!(back, id);
    assert!(
        shown.contains(&format!(
            "flip {back} started: restore:sz: 2 units (planned)\n  unit u05: hz -> sz\n  unit u06: hz -> sz\n"
        )),
        "{shown}"
    );
    assert!(
        shown.ends_with(&format!("flip {back}: succeeded\n")),
        "{shown}"
    );
    let status = p.status().await;
    assert_eq!(status.version, 7, "three more versions");
    for name in ["u05", "u06"] {
        assert_eq!(unit(&status, name).region, "sz", "{name}");
        assert_eq!(unit(&status, name).state, "active", "{name}");
    }

    // Nothing left to undo: refused (409), exit 1, no flip started.
    let out = p
        .unitctl(&p.operator, &["restore", "sz", "--reason", "again"])
        .await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("409"), "{shown}");
    assert!(out.stdout.is_empty(), "{shown}");
    assert_eq!(p.status().await.version, 7);
}

/// `flip u03 u04 --to sz --wait`: both units move as one flip of three versions.
#[tokio::test(flavor = "multi_thread")]
async fn a_flip_of_several_units_moves_them_all() {
    let p = plane().await;
    let out = p
        .unitctl(
            &p.operator,
            &[
                "flip",
                "u03",
                "u04",
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
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let id = started_id(&out);
    assert!(
        shown.contains(&format!(
            "flip {id} started: 2 units (planned)\n  unit u03: sh -> sz\n  unit u04: sh -> sz\n"
        )),
        "{shown}"
    );
    assert!(shown.contains("replication"), "{shown}");
    assert!(
        shown.ends_with(&format!("flip {id}: succeeded\n")),
        "{shown}"
    );
    let status = p.status().await;
    assert_eq!(status.version, 4, "one version per step for both units");
    for name in ["u03", "u04"] {
        assert_eq!(unit(&status, name).region, "sz", "{name}");
    }
    let record = p.client(&p.operator).flip(&id).await.expect("record");
    assert_eq!(record.units.len(), 2, "{record:?}");
    assert_eq!(record.operation, None);

    // A unit named twice, or one already there: refused before anything starts.
    let out = p
        .unitctl(
            &p.operator,
            &["flip", "u03", "u05", "--to", "sz", "--reason", "drill"],
        )
        .await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("422") && shown.contains("u03"), "{shown}");
    assert_eq!(p.status().await.version, 4);
}

/// An evacuation whose units a running flip holds is refused (409, exit 1) naming that flip;
/// a running evacuation shows in `status` and `flip-show --wait` with its operation and
/// units; `--output json` prints the record; a bad or unknown region is refused.
#[tokio::test(flavor = "multi_thread")]
async fn an_evacuation_of_units_a_running_flip_holds_is_refused_naming_it() {
    let p = plane().await;
    let out = p
        .unitctl(
            &p.operator,
            &[
                "flip",
                "u05",
                "u06",
                "--to",
                "hz",
                "--confirm",
                "--reason",
                "drill",
                "--output",
                "json",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let holder: control_api::FlipAccepted = parse(&out);

    for json in [false, true] {
        let mut args = vec!["evacuate", "sz", "--reason", "incident"];
        if json {
            args.extend(["--wait", "--output", "json"]);
        }
        let out = p.unitctl(&p.operator, &args).await;
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(
            shown.contains("409") && shown.contains(&holder.id),
            "names the running flip: {shown}"
        );
        assert!(out.stdout.is_empty(), "nothing on stdout: {shown}");
    }

    // The holder ends (cancelled: rolled back); then the evacuation starts.
    let out = p.unitctl(&p.operator, &["flip-cancel", &holder.id]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = p
        .unitctl(&p.operator, &["flip-show", &holder.id, "--wait"])
        .await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.starts_with(&format!("flip {}: 2 units (Planned) by ops: ", holder.id))
            && shown.contains("  unit u05: sz -> hz\n  unit u06: sz -> hz\n"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("flip {}: rolled_back", holder.id)),
        "{shown}"
    );

    let out = p
        .unitctl(
            &p.operator,
            &[
                "evacuate",
                "sz",
                "--to",
                "sh",
                "--confirm",
                "--reason",
                "incident",
            ],
        )
        .await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let id = started_id(&out);
    assert!(
        shown.contains("  unit u05: sz -> sh\n  unit u06: sz -> sh\n")
            && shown.contains(&format!("follow it: unitctl flip-show {id}")),
        "{shown}"
    );
    let out = p.unitctl(&p.operator, &["status"]).await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for name in ["u05", "u06"] {
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with(name) && l.ends_with(&format!("{id} (evacuate:sz)"))),
            "{name}'s flip and its operation: {shown}"
        );
    }
    let out = p.unitctl(&p.operator, &["flip-confirm", &id]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = p.unitctl(&p.operator, &["flip-show", &id, "--wait"]).await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown.starts_with(&format!(
            "flip {id}: evacuate:sz: 2 units (Planned) by ops: "
        )),
        "{shown}"
    );
    assert!(
        shown.ends_with(&format!("flip {id}: succeeded\n")),
        "{shown}"
    );

    // --output json with --wait: the record once it ended.
    let out = p
        .unitctl(
            &p.operator,
            &[
                "restore", "sz", "--reason", "done", "--wait", "--output", "json",
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let record: control_api::FlipRecord = parse(&out);
    assert_eq!(
        record.state,
        control_api::FlipState::Succeeded,
        "{record:?}"
    );
    assert_eq!(record.operation.as_deref(), Some("restore:sz"));
    let moves: Vec<_> = record
        .units
        .iter()
        .map(|u| (u.unit.as_str(), u.from.as_str(), u.to.as_str()))
        .collect();
    assert_eq!(moves, [("u05", "sh", "sz"), ("u06", "sh", "sz")]);
    let out = p
        .unitctl(
            &p.operator,
            &[
                "evacuate",
                "sz",
                "--emergency",
                "--reason",
                "down",
                "--output",
                "json",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let accepted: control_api::FlipAccepted = parse(&out);
    let out = p
        .unitctl(
            &p.operator,
            &["flip-show", &accepted.id, "--wait", "--output", "json"],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let record: control_api::FlipRecord = parse(&out);
    assert_eq!(record.mode, control_api::FlipMode::Emergency);
    assert_eq!(record.operation.as_deref(), Some("evacuate:sz"));
    assert_eq!(record.units.len(), 2, "{record:?}");
    let status = p.status().await;
    for name in ["u05", "u06"] {
        assert_eq!(unit(&status, name).region, "hz", "{name}: to its standby");
    }

    // An unknown region: refused (404, exit 1); a name that is no path segment: exit 2.
    let out = p
        .unitctl(&p.operator, &["evacuate", "mars", "--reason", "x"])
        .await;
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(shown.contains("404") && shown.contains("mars"), "{shown}");
    let out = p
        .unitctl(&p.operator, &["restore", "s/z", "--reason", "x"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // A token the control plane does not know: 4.
    let out = p
        .unitctl("not-a-token", &["evacuate", "sz", "--reason", "x"])
        .await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmation_wait_prints_the_command_and_the_deadline_and_flip_extend_moves_it() {
    let p = plane().await;
    // An emergency flip waits for nothing: a check asked of it is refused, not ignored.
    let refused = p
        .unitctl(
            &p.operator,
            &[
                "flip",
                "u03",
                "--to",
                "sz",
                "--reason",
                "drill",
                "--emergency",
                "--confirm",
            ],
        )
        .await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("cannot be used with"),
        "{}",
        text(&refused)
    );
    let mut command = unitctl_command(&[
        "flip",
        "u03",
        "--to",
        "sz",
        "--confirm",
        "--check-timeout-s",
        "900",
        "--reason",
        "drill",
        "--wait",
    ]);
    command
        .env("UNITGATE_SERVER", format!("http://{}", p.server.addr))
        .env("UNITGATE_TOKEN", &p.operator)
        .stdout(Stdio::piped());
    let mut child = command.spawn().expect("unitctl runs");
    let stdout = child.stdout.take().expect("stdout");
    // Read the waiting lines as they come (the flip blocks until confirmed).
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut waiting = String::new();
    let id = loop {
        let line = seen
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no confirm command printed: {waiting}"));
        waiting.push_str(&line);
        waiting.push('\n');
        if let Some(id) = line.trim().strip_prefix("unitctl flip-confirm ") {
            break id.to_owned();
        }
    };
    assert!(
        waiting.contains("waiting for a confirmation until ") && waiting.contains(" UTC"),
        "{waiting}"
    );
    let before = p
        .client(&p.operator)
        .flip(&id)
        .await
        .expect("flip")
        .confirm_by_ms
        .expect("deadline");
    // --check-timeout-s set the wait (60 s without it).
    assert!(
        before > control_api::now_ms() + 800_000,
        "{before} is not 900 s on"
    );
    let out = p
        .unitctl(&p.operator, &["flip-extend", &id, "--seconds", "120"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("extend sent"), "{}", text(&out));
    // The deadline it prints is the moved one.
    let moved_s = (before + 120_000) / 1000 % 86_400;
    let moved = format!(
        "{:02}:{:02}:{:02} UTC",
        moved_s / 3600,
        moved_s / 60 % 60,
        moved_s % 60
    );
    assert!(
        text(&out).contains("120 s added; it waits for a confirmation until ")
            && text(&out).contains(&moved),
        "{} (expected {moved})",
        text(&out)
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p
        .client(&p.operator)
        .flip(&id)
        .await
        .expect("flip")
        .confirm_by_ms
        != Some(before + 120_000)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "deadline never moved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = p.unitctl(&p.operator, &["flip-confirm", &id]).await;
    assert!(out.status.success(), "{}", text(&out));
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joined")
        .expect("exit");
    assert!(status.success(), "{status}");
}
