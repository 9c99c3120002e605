//! Real control-plane processes (and a real etcd) on 127.0.0.1, ports chosen by the OS, and
//! in-process gateways following them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use control_api::{Client, TableText};
use control_plane::auth::{hash_token, new_token};
use gateway::config::GatewayConfig;
use gateway::{Gateway, Listeners};

const TIMEOUT: Duration = Duration::from_secs(10);

pub const HOP_SECRET: &str = "test-hop-secret-0123456789abcdef0123";

pub const REGIONS: [&str; 3] = ["hz", "sh", "sz"];

/// One token per role; gateway tokens one per region, bound to the ids `<region>-*`.
#[derive(Clone)]
pub struct Tokens {
    pub admin: String,
    pub operator: String,
    pub viewer: String,
    pub gateways: Vec<(String, String)>,
}

impl Tokens {
    pub fn new() -> Self {
        Self {
            admin: new_token(),
            operator: new_token(),
            viewer: new_token(),
            gateways: REGIONS
                .iter()
                .map(|r| ((*r).to_owned(), new_token()))
                .collect(),
        }
    }

    /// The gateway token of `region`.
    pub fn gateway(&self, region: &str) -> &str {
        &self
            .gateways
            .iter()
            .find(|(r, _)| r == region)
            .expect("a region with a gateway token")
            .1
    }

    fn yaml(&self) -> String {
        let mut out: String = [
            ("root", "admin", &self.admin),
            ("ops", "operator", &self.operator),
            ("watcher", "viewer", &self.viewer),
        ]
        .iter()
        .map(|(name, role, token)| {
            format!(
                "  - {{ name: {name}, role: {role}, sha256: {} }}\n",
                hash_token(token)
            )
        })
        .collect();
        for (region, token) in &self.gateways {
            out.push_str(&format!(
                "  - {{ name: gw-{region}, role: gateway, gateway_id: \"{region}-*\", region: {region}, sha256: {} }}\n",
                hash_token(token)
            ));
        }
        out
    }
}

pub fn example_table_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/three-regions.yaml")
}

/// A config for a control plane on `listen` with `store` (a YAML flow mapping).
pub fn write_config(dir: &Path, name: &str, listen: &str, store: &str, tokens: &Tokens) -> PathBuf {
    write_config_with(
        dir,
        name,
        listen,
        store,
        tokens,
        "gateway_stale_after_s: 6\n",
    )
}

/// [`write_config`] with more settings (YAML lines).
pub fn write_config_with(
    dir: &Path,
    name: &str,
    listen: &str,
    store: &str,
    tokens: &Tokens,
    extra: &str,
) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let text = format!(
        "listen: {listen}\nstore: {store}\ninitial_table: {}\nreplica: {name}\nwatch_hold_s: 2\nmax_body_bytes: 65536\n{extra}tokens:\n{}",
        example_table_path().display(),
        tokens.yaml()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// The `store:` of a file store in `dir`.
pub fn file_store(dir: &Path) -> String {
    format!("{{ file: {{ dir: {} }} }}", dir.join("store").display())
}

/// A config for a control plane on a port the OS picks, with a file store in `dir`.
pub fn file_plane_config(dir: &Path, tokens: &Tokens) -> PathBuf {
    write_config(dir, "cp", "127.0.0.1:0", &file_store(dir), tokens)
}

/// A `unitgate-control` process.
pub struct ControlProcess {
    child: Child,
    pub addr: SocketAddr,
    pub url: String,
    pub config: PathBuf,
}

impl ControlProcess {
    /// Start the binary and wait for the line that says where it listens.
    pub fn start(config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_unitgate-control"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unitgate-control starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the control plane says where it listens");
        let addr: SocketAddr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        Self {
            child,
            addr,
            url: format!("http://{addr}"),
            config: config.to_owned(),
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn client(&self, token: &str) -> Client {
        Client::new(&self.url, Some(token), None)
            .expect("client")
            .with_timeout(TIMEOUT)
    }
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Run the binary to its end; (exit code, stderr).
pub fn run_to_end(config: &Path) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_unitgate-control"))
        .arg("--config")
        .arg(config)
        .output()
        .expect("runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A gateway of `region` following the control plane at `url`.
pub async fn gateway(region: &str, url: &str, token: &str, cache: &Path, id: &str) -> Gateway {
    let text = format!(
        "region: {region}\nlisten: {{ http: [\"127.0.0.1:0\"] }}\nadmin: {{ listen: \"127.0.0.1:0\" }}\ntable: {{ control_plane: {{ url: \"{url}\", token: \"{token}\", gateway_id: {id} }} }}\ncache_dir: {}\nhop_secret: {HOP_SECRET}\nhealth_check: {{ interval_ms: 0 }}\naccess_log: false\n",
        cache.display()
    );
    let config = GatewayConfig::parse(&text, "test").expect("gateway config");
    let listeners = Listeners::bind(&config).expect("bind");
    Gateway::start(config, listeners)
        .await
        .expect("gateway starts")
}

/// Wait until `gateway` serves `version` or newer.
pub async fn applied(gateway: &Gateway, version: u64) {
    let mut versions = gateway.store.applied_versions();
    tokio::time::timeout(
        Duration::from_secs(20),
        versions.wait_for(|v| *v >= version),
    )
    .await
    .unwrap_or_else(|_| panic!("gateway did not apply version {version}"))
    .expect("store alive");
}

pub fn unit_placement(table: &router_rules::RawTable, unit: &str) -> (String, String) {
    let u = table
        .units
        .iter()
        .find(|u| u.name == unit)
        .expect("unit in table");
    (u.region.clone(), u.state.as_str().to_owned())
}

/// 20 clients PUT with the same If-Match: one wins, 19 get 409, versions have no gaps, and
/// the audit log has all 20 attempts.
pub async fn race_table_writes(cp: &ControlProcess, tokens: &Tokens) {
    let admin = cp.client(&tokens.admin);
    let base = admin.table().await.expect("table");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let admin = admin.clone();
        let mut table = base.table.clone();
        table.units[1].pinned_keys = vec![format!("racer-{i}")];
        let put = control_api::PutTable {
            if_match: base.version,
            ..Default::default()
        };
        tasks.push(tokio::spawn(async move {
            match admin.put_table(&TableText::of(&table), &put).await {
                Ok(_) => http::StatusCode::OK,
                Err(error) => error.status().unwrap_or_else(|| panic!("put: {error}")),
            }
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task"));
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == http::StatusCode::OK)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == http::StatusCode::CONFLICT)
            .count(),
        19,
        "{statuses:?}"
    );
    let now = admin.table().await.expect("table");
    assert_eq!(now.version, base.version + 1);
    for v in 1..=now.version {
        let stored = admin.table_version(v).await.expect("no gaps");
        assert_eq!(stored.version, v);
    }
    let audit = admin.audit(None).await.expect("audit");
    let puts: Vec<&control_api::AuditEntry> =
        audit.iter().filter(|e| e.action == "table.put").collect();
    assert_eq!(puts.len(), 20, "{puts:?}");
    assert_eq!(
        puts.iter()
            .filter(|e| e.outcome == control_api::AuditOutcome::Ok)
            .count(),
        1
    );
    assert_eq!(puts.iter().filter(|e| e.status == Some(409)).count(), 19);
}

/// A flip request written as its JSON body.
pub fn flip_request(body: serde_json::Value) -> control_api::FlipRequest {
    serde_json::from_value(body).expect("a flip request")
}

/// Poll flip `id` until `done` holds (flip records have no push channel; operators poll too).
pub async fn flip_until(
    client: &Client,
    id: &str,
    what: &str,
    done: impl Fn(&control_api::FlipRecord) -> bool,
) -> control_api::FlipRecord {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let flip = client.flip(id).await.expect("flip");
        if done(&flip) {
            return flip;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {flip:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll flip `id` until its last step is `step` (running or not).
pub async fn flip_at(
    client: &Client,
    id: &str,
    step: control_api::StepName,
) -> control_api::FlipRecord {
    flip_until(client, id, &format!("{step}"), |f| {
        f.steps.last().is_some_and(|s| s.name == step)
    })
    .await
}

/// The version that step `name` of `flip` stored.
pub fn stored_by(flip: &control_api::FlipRecord, name: control_api::StepName) -> u64 {
    flip.steps
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| s.version)
        .unwrap_or_else(|| panic!("no version stored by {name}: {flip:?}"))
}

/// The table `client`'s replica serves, once it is `version` or later: a replica learns what
/// another stored through its watch of the store, a moment after the store has it.
pub async fn table_at_least(client: &Client, version: u64) -> control_api::StoredTable {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let table = client.table().await.expect("table");
        if table.version >= version {
            return table;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still at version {} (waiting for {version})",
            table.version
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The audit log once it holds flip `id`'s `flip.end` entry: a flip's record shows it ended
/// just before that entry is appended.
pub async fn audit_after_end(client: &Client, id: &str) -> Vec<control_api::AuditEntry> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let audit = client.audit(None).await.expect("audit");
        if audit
            .iter()
            .any(|e| e.action == "flip.end" && e.flip.as_deref() == Some(id))
        {
            return audit;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "flip {id}: no flip.end audited: {audit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Poll flip `id` until it ends.
pub async fn wait_flip(client: &Client, id: &str) -> control_api::FlipRecord {
    flip_until(client, id, "flip ended", |f| f.state.is_final()).await
}
