//! The system as deployed, on one machine: the real binaries as separate processes on
//! 127.0.0.1 — demo upstreams (`unitgate-demo upstream`), a control plane
//! (`unitgate-control`), a gateway per region (`unitgate`) — on ports the OS picks. Tests read
//! the processes' output: the upstreams print every request they receive, the gateways their
//! JSON access log.
//!
//! The binaries are the workspace's own build (`target/<profile>/`): `cargo test` builds them
//! before it runs any test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use control_api::Client;
use control_plane::auth::{hash_token, new_token};
use gateway::demo::Received;
pub use testkit::{Etcd, Process, free_port};

/// Regions of the example table, in its order.
pub const REGIONS: [&str; 3] = ["hz", "sh", "sz"];
/// Services of the example table, in its pools' order.
pub const SERVICES: [&str; 3] = ["cart", "order", "item"];
/// The gateways' shared hop secret.
pub const HOP_SECRET: &str = "e2e-hop-secret-0123456789abcdef0123456789";
/// Default request timeout.
pub const T: Duration = Duration::from_secs(10);

/// A workspace binary, built by `cargo test` next to the test executables.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test` from the workspace root, which builds every binary",
        path.display()
    );
    path
}

/// The example routing table.
pub fn example_table() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/three-regions.yaml"),
    )
    .expect("the example table")
}

/// One token per role.
#[derive(Clone)]
pub struct Tokens {
    /// Admin.
    pub admin: String,
    /// Operator.
    pub operator: String,
    /// Gateway tokens by region, each bound to `<region>-*`.
    pub gateways: BTreeMap<String, String>,
}

/// A gateway process and where it listens.
pub struct GatewayProcess {
    /// The process.
    pub process: Process,
    /// Client listener.
    pub http: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
}

/// How to start the system.
#[derive(Default, Clone, Copy)]
pub struct Options {
    /// Use an etcd store (started here) instead of the file store.
    pub etcd: bool,
    /// Put a simulated WAN link of this delay (each way) in front of every gateway, for the
    /// other regions' forwards.
    pub wan_delay: Option<Duration>,
    /// The gateways' `timeouts.moved_write_grace_ms`, when not the default.
    pub moved_write_grace_ms: Option<u64>,
}

/// Three regions, their upstreams and a control plane, each a process.
pub struct System {
    /// Scratch directory: configs, store, caches.
    pub dir: tempfile::TempDir,
    /// Tokens.
    pub tokens: Tokens,
    /// The control plane.
    pub control: Process,
    /// Its address.
    pub control_addr: SocketAddr,
    /// Its config.
    pub control_config: PathBuf,
    /// Upstreams by (region, service), and their addresses.
    pub upstreams: BTreeMap<(String, String), (Process, SocketAddr)>,
    /// Gateways by region.
    pub gateways: BTreeMap<String, GatewayProcess>,
    /// etcd, in the etcd mode.
    pub etcd: Option<Etcd>,
}

fn gateway_command(config: &Path) -> Command {
    let mut command = Command::new(bin("unitgate"));
    command.arg("--config").arg(config).env("RUST_LOG", "info");
    command
}

impl System {
    /// Start everything and wait until every gateway serves version 1.
    pub async fn start(options: Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = Tokens {
            admin: new_token(),
            operator: new_token(),
            gateways: REGIONS
                .iter()
                .map(|r| ((*r).to_owned(), new_token()))
                .collect(),
        };
        let mut table = example_table();
        let mut upstreams = BTreeMap::new();
        for (r, region) in REGIONS.iter().enumerate() {
            for (s, service) in SERVICES.iter().enumerate() {
                let mut command = Command::new(bin("unitgate-demo"));
                command.args(["upstream", "--service", service, "--region", region]);
                let process = Process::spawn(&format!("upstream {region}/{service}"), command);
                let line = process
                    .wait_line("listening on", |l| l.starts_with("listening on "))
                    .await;
                let addr: SocketAddr = line
                    .trim_start_matches("listening on ")
                    .parse()
                    .expect("upstream address");
                table = table.replace(
                    &format!("127.0.0.1:18{}0{}", r + 1, s + 1),
                    &addr.to_string(),
                );
                upstreams.insert(
                    ((*region).to_owned(), (*service).to_owned()),
                    (process, addr),
                );
            }
        }
        let mut ports = BTreeMap::new();
        for (i, region) in REGIONS.iter().enumerate() {
            let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let reachable = match options.wan_delay {
                Some(delay) => unitgate_demo::wan_relay(http, delay)
                    .await
                    .expect("WAN relay"),
                None => http,
            };
            table = table.replace(
                &format!("gateways: [\"127.0.0.1:{}\"]", 8001 + i),
                &format!("gateways: [\"{reachable}\"]"),
            );
            ports.insert(*region, (http, admin));
        }
        let table_path = dir.path().join("table.yaml");
        std::fs::write(&table_path, &table).expect("write table");
        let etcd = if options.etcd {
            Some(Etcd::start(dir.path()).await)
        } else {
            None
        };
        let store = match &etcd {
            Some(etcd) => format!(
                "{{ etcd: {{ endpoints: [\"{}\"], prefix: /e2e/, flip_lease_s: 2 }} }}",
                etcd.endpoint
            ),
            None => format!(
                "{{ file: {{ dir: \"{}\" }} }}",
                dir.path().join("store").display()
            ),
        };
        let control_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let control_config = dir.path().join("control.yaml");
        std::fs::write(
            &control_config,
            format!(
                "listen: \"{control_addr}\"\nstore: {store}\ninitial_table: \"{}\"\nreplica: e2e\nwatch_hold_s: 5\ngateway_stale_after_s: 12\ntokens:\n  - {{ name: e2e-admin, role: admin, sha256: {} }}\n  - {{ name: e2e-operator, role: operator, sha256: {} }}\n{}",
                table_path.display(),
                hash_token(&tokens.admin),
                hash_token(&tokens.operator),
                tokens
                    .gateways
                    .iter()
                    .map(|(region, token)| format!(
                        "  - {{ name: e2e-gateway-{region}, role: gateway, gateway_id: \"{region}-*\", region: {region}, sha256: {} }}\n",
                        hash_token(token)
                    ))
                    .collect::<String>(),
            ),
        )
        .expect("write control config");
        let control = Self::control_process(&control_config).await;
        let mut gateways = BTreeMap::new();
        for region in REGIONS {
            let (http, admin) = ports[region];
            let config = dir.path().join(format!("gateway-{region}.yaml"));
            // The tests follow users through the access logs by their ids: logged as they
            // are here (the default, hashed, is tested in access_log.rs).
            std::fs::write(
                &config,
                format!(
                    "region: {region}\nlisten: {{ http: [\"{http}\"] }}\nadmin: {{ listen: \"{admin}\" }}\ntable: {{ control_plane: {{ url: \"http://{control_addr}\", token: \"{}\", gateway_id: {region}-gw }} }}\ncache_dir: \"{}\"\nhop_secret: \"{HOP_SECRET}\"\nlog_format: json\naccess_log: {{ routing_key: as_is }}\nhealth_check: {{ interval_ms: 500, timeout_ms: 200 }}\ntimeouts: {{ connect_ms: 300, drain_s: 2{} }}\n",
                    tokens.gateways[region],
                    dir.path().join(format!("cache-{region}")).display(),
                    options
                        .moved_write_grace_ms
                        .map(|ms| format!(", moved_write_grace_ms: {ms}"))
                        .unwrap_or_default(),
                ),
            )
            .expect("write gateway config");
            let process = Process::spawn(&format!("gateway {region}"), gateway_command(&config));
            process
                .wait_line("gateway serving", |l| l.contains("gateway serving"))
                .await;
            gateways.insert(
                region.to_owned(),
                GatewayProcess {
                    process,
                    http,
                    admin,
                    config,
                },
            );
        }
        Self {
            dir,
            tokens,
            control,
            control_addr,
            control_config,
            upstreams,
            gateways,
            etcd,
        }
    }

    async fn control_process(config: &Path) -> Process {
        let mut command = Command::new(bin("unitgate-control"));
        command.arg("--config").arg(config).env("RUST_LOG", "warn");
        let process = Process::spawn("control plane", command);
        process
            .wait_line("listening on", |l| {
                l.starts_with("unitgate-control listening on")
            })
            .await;
        process
    }

    /// SIGKILL the control plane.
    pub fn kill_control(&mut self) {
        self.control.kill();
    }

    /// Start the control plane again on the same address and store.
    pub async fn restart_control(&mut self) {
        self.control.kill();
        self.control = Self::control_process(&self.control_config).await;
    }

    /// SIGKILL a region's gateway.
    pub fn kill_gateway(&mut self, region: &str) {
        if let Some(g) = self.gateways.get_mut(region) {
            g.process.kill();
        }
    }

    /// Start a region's gateway again (same config, ports and cache); returns its first
    /// log line about the table it serves.
    pub async fn restart_gateway(&mut self, region: &str) -> String {
        let gateway = self.gateways.get_mut(region).expect("region");
        gateway.process.kill();
        gateway.process = Process::spawn(
            &format!("gateway {region}"),
            gateway_command(&gateway.config),
        );
        gateway
            .process
            .wait_line("gateway serving", |l| l.contains("gateway serving"))
            .await
    }

    /// SIGKILL every upstream of a region.
    pub fn kill_upstreams(&mut self, region: &str) {
        for ((r, _), (process, _)) in self.upstreams.iter_mut() {
            if r == region {
                process.kill();
            }
        }
    }

    /// A client of the control plane.
    pub fn control_client(&self, token: &str) -> Client {
        Client::new(&format!("http://{}", self.control_addr), Some(token), None)
            .expect("client")
            .with_timeout(T)
    }

    /// A client of a region's gateway.
    pub fn gateway_client(&self, region: &str) -> Client {
        Client::new(
            &format!("http://{}", self.gateways[region].http),
            None,
            None,
        )
        .expect("client")
    }

    /// Requests an upstream received, in order.
    pub fn received(&self, region: &str, service: &str) -> Vec<Received> {
        self.upstreams[&(region.to_owned(), service.to_owned())]
            .0
            .lines()
            .iter()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait until an upstream has printed `count` requests (its output is read by another
    /// thread, a moment after it answered).
    pub async fn wait_received(&self, region: &str, service: &str, count: usize) {
        self.upstreams[&(region.to_owned(), service.to_owned())]
            .0
            .wait_until(&format!("request {count}"), |lines| {
                lines.iter().filter(|l| l.starts_with('{')).count() >= count
            })
            .await;
    }

    /// A gateway's access-log entries.
    pub fn access_log(&self, region: &str) -> Vec<serde_json::Value> {
        self.gateways[region]
            .process
            .lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "unitgate::access")
            .collect()
    }

    /// Wait until flip `id` ends (operators poll flips, as `unitctl flip --wait` does).
    pub async fn wait_flip(&self, id: &str) -> control_api::FlipRecord {
        let client = self.control_client(&self.tokens.operator);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let flip = client.flip(id).await.expect("flip");
            if flip.state.is_final() {
                return flip;
            }
            assert!(tokio::time::Instant::now() < deadline, "{flip:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until every live gateway (those in `regions`) reports `version` to the control
    /// plane.
    pub async fn converged(&self, regions: &[&str], version: u64) {
        let client = self.control_client(&self.tokens.operator);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let gateways = client.gateways().await.unwrap_or_default();
            let done = regions.iter().all(|r| {
                gateways
                    .iter()
                    .any(|g| g.region == *r && g.applied_version >= version)
            });
            if done {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateways did not converge on version {version}: {gateways:?}"
            );
            // The control plane has no push channel for operators: poll as `unitctl status` does.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A request's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Status (0: no answer).
    pub status: u16,
    /// The JSON body (demo upstreams and gateway errors both answer JSON).
    pub body: serde_json::Value,
}

/// A flip request written as its JSON body.
pub fn flip_request(body: serde_json::Value) -> control_api::FlipRequest {
    serde_json::from_value(body).expect("a flip request")
}

/// Send one request through `client`.
pub async fn send(
    client: &Client,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Outcome {
    let headers: Vec<(http::HeaderName, http::HeaderValue)> = headers
        .iter()
        .map(|(k, v)| {
            (
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            )
        })
        .collect();
    match client.send(method, path, &headers, None, T).await {
        Ok(reply) => Outcome {
            status: reply.status.as_u16(),
            body: serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null),
        },
        Err(error) => Outcome {
            status: 0,
            body: serde_json::json!({ "transport_error": error.to_string() }),
        },
    }
}

/// A user of `unit` in the example table: slot = id mod 10000, units own 1667-slot ranges.
pub fn users_of(unit: &str, count: usize) -> Vec<String> {
    let table = router_rules::load_yaml(&example_table()).expect("example");
    let u = table
        .raw()
        .units
        .iter()
        .find(|u| u.name == unit)
        .expect("unit");
    let [first, last] = u.slots[0];
    (0..count)
        .map(|i| {
            let slot = first + (i as u32 * 7919) % (last - first + 1);
            (u64::from(slot) + 10_000 * (i as u64 + 1)).to_string()
        })
        .collect()
}
