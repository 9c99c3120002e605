//! The routing key in a real gateway's JSON access log, in each `access_log.routing_key` mode:
//! `hashed` (the default) shows a keyed hash that two gateways of a fleet agree on, `as_is` the
//! key, `omitted` neither; a key taken from the path is kept out of `path` unless shown as is.
//! Every value is JSON, none Rust debug text.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use control_api::Client;
use gateway::hop::KeyHasher;
use http::Method;
use unitgate_e2e::{HOP_SECRET, Process, bin, example_table, free_port, send};

/// A route keyed by the second path segment (`/users/<id>/...`), besides the example's.
const USERS_ROUTE: &str = "  - name: users\n    match: { path_prefix: /users }\n    service: cart\n    class: C\n    key:\n      - path_segment: 2\n    missing_key: reject\n";

/// Gateways for some regions of the example table (with a path-keyed route), the `cart`
/// upstream of each, every gateway with `access_log` as given.
struct Fleet {
    _dir: tempfile::TempDir,
    _upstreams: Vec<Process>,
    gateways: Vec<(&'static str, Process, SocketAddr)>,
}

impl Fleet {
    async fn start(regions: &[&'static str], access_log: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut table = format!("{}{USERS_ROUTE}", example_table());
        let mut upstreams = Vec::new();
        for region in regions {
            let mut command = Command::new(bin("unitgate-demo"));
            command.args(["upstream", "--service", "cart", "--region", region]);
            let process = Process::spawn(&format!("upstream {region}/cart"), command);
            let line = process
                .wait_line("listening on", |l| l.starts_with("listening on "))
                .await;
            let index = ["hz", "sh", "sz"]
                .iter()
                .position(|r| r == region)
                .expect("region");
            table = table.replace(
                &format!("127.0.0.1:18{}01", index + 1),
                line.trim_start_matches("listening on "),
            );
            upstreams.push(process);
        }
        let mut addresses = Vec::new();
        for (i, region) in ["hz", "sh", "sz"].iter().enumerate() {
            let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
            table = table.replace(&format!("127.0.0.1:800{}", i + 1), &http.to_string());
            addresses.push((*region, http));
        }
        let table_path = dir.path().join("table.yaml");
        std::fs::write(&table_path, &table).expect("table");
        let mut gateways = Vec::new();
        for (region, http) in addresses {
            if !regions.contains(&region) {
                continue;
            }
            let config = dir.path().join(format!("gateway-{region}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "region: {region}\nlisten: {{ http: [\"{http}\"] }}\nadmin: {{ listen: \"127.0.0.1:{}\" }}\ntable: {{ file: \"{}\" }}\nhop_secret: \"{HOP_SECRET}\"\nlog_format: json\n{access_log}health_check: {{ interval_ms: 0 }}\n",
                    free_port(),
                    table_path.display()
                ),
            )
            .expect("config");
            gateways.push((region, gateway(&config).await, http));
        }
        Self {
            _dir: dir,
            _upstreams: upstreams,
            gateways,
        }
    }

    fn gateway(&self, region: &str) -> (&Process, Client) {
        let (_, process, http) = self
            .gateways
            .iter()
            .find(|(r, _, _)| *r == region)
            .expect("gateway");
        let client = Client::new(&format!("http://{http}"), None, None).expect("client");
        (process, client)
    }

    /// Send `GET path` with `headers` to `region`'s gateway under a trace id of its own, and
    /// return the access-log line it wrote (from each of `logged_by`).
    async fn request(
        &self,
        region: &str,
        path: &str,
        headers: &[(&str, &str)],
        trace: &str,
        logged_by: &[&str],
    ) -> Vec<serde_json::Value> {
        let (_, client) = self.gateway(region);
        let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
        let mut headers = headers.to_vec();
        headers.push(("traceparent", &traceparent));
        let outcome = send(&client, Method::GET, path, &headers).await;
        assert_eq!(outcome.status, 200, "{outcome:?}");
        let mut lines = Vec::new();
        for region in logged_by {
            let (process, _) = self.gateway(region);
            let line = process
                .wait_line(&format!("the access-log line of {trace}"), |l| {
                    l.contains("unitgate::access") && l.contains(trace)
                })
                .await;
            let line: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
            no_debug_text(&line);
            lines.push(line);
        }
        lines
    }
}

async fn gateway(config: &Path) -> Process {
    let mut command = Command::new(bin("unitgate"));
    command.arg("--config").arg(config).env("RUST_LOG", "info");
    let process = Process::spawn(&format!("gateway {}", config.display()), command);
    process
        .wait_line("gateway serving", |l| l.contains("gateway serving"))
        .await;
    process
}

/// No value of an access-log line is Rust debug text (`Some(1)`, `None`, quoted strings).
fn no_debug_text(line: &serde_json::Value) {
    let object = line.as_object().expect("an object");
    for (field, value) in object {
        if let Some(text) = value.as_str() {
            assert!(
                !(text.starts_with("Some(") || text == "None" || text.starts_with('"')),
                "{field}: {text:?} in {line}"
            );
        }
    }
    for number in ["status", "slot", "hops_in", "version", "duration_us"] {
        assert!(object[number].is_number(), "{number} in {line}");
    }
    assert!(object["stress"].is_boolean(), "{line}");
}

/// A user id of `unit`, of letters: a number could turn up in another field by chance.
fn user_of(unit: &str) -> String {
    let table = router_rules::load_yaml(&example_table()).expect("example");
    let hz = table.region_index("hz").expect("hz");
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|user| {
            let request =
                router_rules::SimpleRequest::new("GET", "/cart").with_header("x-user-id", user);
            table
                .resolve(&request, hz)
                .unit
                .is_some_and(|u| &*u.name == unit)
        })
        .expect("a user of the unit")
}

fn trace(n: u8) -> String {
    format!("{:032x}", 0xacce55_u128 << 32 | u128::from(n))
}

#[tokio::test(flavor = "multi_thread")]
async fn hashed_by_default_the_same_on_every_gateway_of_the_fleet() {
    // No routing_key given: hashed.
    let fleet = Fleet::start(&["hz", "sh"], "access_log: true\n").await;
    let hasher = KeyHasher::from_hop_secret(HOP_SECRET.as_bytes());
    let local = user_of("u01");
    let remote = user_of("u03");

    let line = &fleet
        .request("hz", "/cart", &[("x-user-id", &local)], &trace(1), &["hz"])
        .await[0];
    let hash = line["key_hash"].as_str().expect("key_hash");
    assert_eq!(hash.len(), 16, "{line}");
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
    assert_eq!(hash, hasher.hash(&local), "keyed by the hop secret");
    assert!(line.get("key").is_none(), "{line}");
    assert!(
        !line.to_string().contains(&local),
        "the key nowhere: {line}"
    );

    // Forwarded hz -> sh: both gateways write the same hash, so the lines join by it.
    let lines = fleet
        .request(
            "hz",
            "/cart",
            &[("x-user-id", &remote)],
            &trace(2),
            &["hz", "sh"],
        )
        .await;
    assert_eq!(lines[0]["forwarded_to"], "sh");
    assert_eq!(
        (&lines[0]["hop"], &lines[1]["hop"]),
        (&"entry".into(), &"served".into())
    );
    assert_eq!(lines[0]["key_hash"], lines[1]["key_hash"], "{lines:?}");
    assert_eq!(lines[0]["key_hash"].as_str(), Some(&*hasher.hash(&remote)));
    for line in &lines {
        assert!(!line.to_string().contains(&remote), "{line}");
    }

    // The key in the path: the path shows where it was, the hash who it was.
    let line = &fleet
        .request(
            "hz",
            &format!("/users/{local}/cart"),
            &[],
            &trace(3),
            &["hz"],
        )
        .await[0];
    assert_eq!(line["route"], "users");
    assert_eq!(line["path"], "/users/{key}/cart");
    assert_eq!(line["key_hash"].as_str(), Some(hash), "the same user");
    assert!(!line.to_string().contains(&local), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn as_is_shows_the_key() {
    let fleet = Fleet::start(&["hz"], "access_log: { routing_key: as_is }\n").await;
    let user = user_of("u01");
    let line = &fleet
        .request("hz", "/cart", &[("x-user-id", &user)], &trace(4), &["hz"])
        .await[0];
    assert_eq!(line["key"].as_str(), Some(&*user), "{line}");
    assert!(line.get("key_hash").is_none(), "{line}");
    assert_eq!(line["hop"], "local");
    let line = &fleet
        .request(
            "hz",
            &format!("/users/{user}/cart"),
            &[],
            &trace(5),
            &["hz"],
        )
        .await[0];
    assert_eq!(line["path"].as_str(), Some(&*format!("/users/{user}/cart")));
    assert_eq!(line["key"].as_str(), Some(&*user));
}

#[tokio::test(flavor = "multi_thread")]
async fn omitted_shows_neither() {
    let fleet = Fleet::start(
        &["hz"],
        "access_log:\n  enabled: true\n  routing_key: omitted\n",
    )
    .await;
    let user = user_of("u01");
    for (n, path, headers) in [
        (6, "/cart".to_owned(), vec![("x-user-id", user.as_str())]),
        (7, format!("/users/{user}/cart"), vec![]),
    ] {
        let line = &fleet
            .request("hz", &path, &headers, &trace(n), &["hz"])
            .await[0];
        assert!(line.get("key").is_none(), "{line}");
        assert!(line.get("key_hash").is_none(), "{line}");
        assert_eq!(line["unit"], "u01", "{line}");
        assert!(!line.to_string().contains(&user), "{line}");
    }
}
