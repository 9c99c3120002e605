//! TLS end to end, as deployed: two regions' gateways (`unitgate` processes) and demo upstreams
//! (`unitgate-demo upstream`, one of them serving HTTPS) on 127.0.0.1, certificates from test
//! CAs made here. hz's `cart` pool is an HTTP/1.1 upstream over TLS; the hop from hz to sh's
//! gateway is TLS with a client certificate, and sh's listener demands one (mutual TLS); the
//! hop marker is verified at sh as ever. An upstream whose certificate hz does not trust gets
//! `502` and a log line naming it and the reason.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use http::Method;
use testkit::tls::{Leaf, TestCa};
use unitgate_e2e::{HOP_SECRET, Process, bin, free_port, send};

/// `unitgate-demo upstream`, over TLS when given a certificate and key; and its address.
async fn upstream(service: &str, region: &str, tls: Option<&Leaf>) -> (Process, SocketAddr) {
    let mut command = Command::new(bin("unitgate-demo"));
    command.args(["upstream", "--service", service, "--region", region]);
    if let Some(leaf) = tls {
        command
            .arg("--tls-cert")
            .arg(&leaf.cert_path)
            .arg("--tls-key")
            .arg(&leaf.key_path);
    }
    let process = Process::spawn(&format!("upstream {region}/{service}"), command);
    let line = process
        .wait_line("listening on", |l| l.starts_with("listening on "))
        .await;
    let addr = line
        .trim_start_matches("listening on ")
        .parse()
        .expect("upstream address");
    (process, addr)
}

/// A `unitgate` process for `region` with `listen` (YAML), following the table file `table`.
async fn gateway(dir: &Path, region: &str, listen: &str, table: &Path) -> Process {
    let config = dir.join(format!("gateway-{region}.yaml"));
    std::fs::write(
        &config,
        format!(
            "region: {region}\nlisten: {listen}\nadmin: {{ listen: \"127.0.0.1:{}\" }}\ntable: {{ file: \"{}\" }}\nhop_secret: \"{HOP_SECRET}\"\nlog_format: json\naccess_log: {{ routing_key: as_is }}\nhealth_check: {{ interval_ms: 0 }}\ntimeouts: {{ connect_ms: 1000, drain_s: 1 }}\n",
            free_port(),
            table.display()
        ),
    )
    .expect("write gateway config");
    let mut command = Command::new(bin("unitgate"));
    command.arg("--config").arg(&config).env("RUST_LOG", "info");
    let process = Process::spawn(&format!("gateway {region}"), command);
    process
        .wait_line("gateway serving", |l| l.contains("gateway serving"))
        .await;
    process
}

/// The access-log entries of `gateway` for routing key `key`.
fn access(gateway: &Process, key: &str) -> Vec<serde_json::Value> {
    gateway
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "unitgate::access" && v["key"] == key)
        .collect()
}

/// Requests an upstream printed.
fn received(upstream: &Process) -> Vec<serde_json::Value> {
    upstream
        .lines()
        .iter()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_upstream_pool_and_a_mutual_tls_hop_between_regions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let services = TestCa::new(d, "services");
    let fleet = TestCa::new(d, "fleet");
    let stranger = TestCa::new(d, "stranger");
    let cart_hz_cert = services.leaf(d, "cart-hz", &["cart.hz.e2e"]);
    let order_hz_cert = stranger.leaf(d, "order-hz", &["127.0.0.1"]);
    let sh_gateway_cert = fleet.leaf(d, "gw-sh", &["gw.sh.e2e"]);
    let hz_gateway_cert = fleet.leaf(d, "gw-hz", &["gw.hz.e2e"]);

    let (cart_hz, cart_hz_addr) = upstream("cart", "hz", Some(&cart_hz_cert)).await;
    let (order_hz, order_hz_addr) = upstream("order", "hz", Some(&order_hz_cert)).await;
    let (sh_app, sh_app_addr) = upstream("app", "sh", None).await;
    let hz_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let sh_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));

    // Users 0-4999 live in hz (u1), 5000-9999 in sh (u2).
    let table = d.join("table.yaml");
    std::fs::write(
        &table,
        format!(
            r#"version: 1
regions:
  - name: hz
    gateways: ["{hz_addr}"]
    pools:
      cart:
        endpoints: ["{cart_hz_addr}"]
        tls: {{ ca_file: "{services_ca}", server_name: cart.hz.e2e }}
        protocol: http1
      order:
        endpoints: ["{order_hz_addr}"]
        tls: {{ ca_file: "{services_ca}" }}
  - name: sh
    gateways:
      endpoints: ["{sh_addr}"]
      tls: {{ ca_file: "{fleet_ca}", server_name: gw.sh.e2e, client_cert: "{hz_cert}", client_key: "{hz_key}" }}
    pools:
      cart: ["{sh_app_addr}"]
      order: ["{sh_app_addr}"]
units:
  - {{ name: u1, center: true, slots: [[0, 4999]], region: hz }}
  - {{ name: u2, slots: [[5000, 9999]], region: sh }}
routes:
  - {{ name: cart, match: {{ path_prefix: /cart }}, service: cart, class: C, key: [{{ header: X-User-Id }}] }}
  - {{ name: order, match: {{ path_prefix: /order }}, service: order, class: C, key: [{{ header: X-User-Id }}] }}
"#,
            services_ca = services.pem_path.display(),
            fleet_ca = fleet.pem_path.display(),
            hz_cert = hz_gateway_cert.cert_path.display(),
            hz_key = hz_gateway_cert.key_path.display(),
        ),
    )
    .expect("write table");
    let sh = gateway(
        d,
        "sh",
        &format!(
            "{{ https: [{{ address: \"{sh_addr}\", cert: \"{}\", key: \"{}\", client_ca: \"{}\" }}] }}",
            sh_gateway_cert.cert_path.display(),
            sh_gateway_cert.key_path.display(),
            fleet.pem_path.display()
        ),
        &table,
    )
    .await;
    let hz = gateway(d, "hz", &format!("{{ http: [\"{hz_addr}\"] }}"), &table).await;
    let client = control_api::Client::new(&format!("http://{hz_addr}"), None, None)
        .expect("client")
        .with_timeout(unitgate_e2e::T);

    // An HTTP/1.1 upstream over TLS, in the region the request entered.
    let local = send(&client, Method::GET, "/cart/items", &[("x-user-id", "42")]).await;
    assert_eq!(local.status, 200, "{local:?}");
    assert_eq!(
        (
            local.body["service"].as_str(),
            local.body["region"].as_str()
        ),
        (Some("cart"), Some("hz"))
    );
    cart_hz
        .wait_line("the request", |l| l.contains("/cart/items"))
        .await;
    assert_eq!(received(&cart_hz)[0]["headers"]["x-unitgate-unit"], "u1");

    // A user of sh's unit: forwarded by hz to sh's gateway over mutual TLS, served there.
    for n in 0..3 {
        let path = format!("/cart/{n}");
        let remote = send(&client, Method::GET, &path, &[("x-user-id", "7000")]).await;
        assert_eq!(remote.status, 200, "{remote:?}");
        assert_eq!(remote.body["region"], "sh", "{remote:?}");
    }
    sh_app
        .wait_until("three requests", |lines| {
            lines.iter().filter(|l| l.starts_with('{')).count() == 3
        })
        .await;
    assert!(
        received(&sh_app)
            .iter()
            .all(|r| r["headers"]["x-unitgate-unit"] == "u2")
    );
    // Both access logs: hz forwarded it, sh served it after one verified hop.
    sh.wait_until("three access-log lines", |_| access(&sh, "7000").len() == 3)
        .await;
    hz.wait_until("three access-log lines", |_| access(&hz, "7000").len() == 3)
        .await;
    assert!(
        access(&hz, "7000")
            .iter()
            .all(|e| e["forwarded_to"] == "sh")
    );
    assert!(
        access(&sh, "7000")
            .iter()
            .all(|e| e["hops_in"] == 1 && e["status"] == 200),
        "{:?}",
        access(&sh, "7000")
    );

    // An upstream whose certificate no CA of the pool vouches for: 502, nothing reaches it,
    // and hz says why, naming it.
    let untrusted = send(&client, Method::GET, "/order/1", &[("x-user-id", "42")]).await;
    assert_eq!(untrusted.status, 502, "{untrusted:?}");
    assert_eq!(untrusted.body["upstream"], order_hz_addr.to_string());
    let expected = format!("upstream {order_hz_addr}: certificate not trusted: UnknownIssuer");
    let line = hz
        .wait_line("the TLS failure", |l| l.contains(&expected))
        .await;
    assert!(line.contains("WARN"), "{line}");
    assert!(received(&order_hz).is_empty());
}
