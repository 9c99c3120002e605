//! The local multi-region demo: a control plane (file store), a gateway per region following
//! it, and demo upstreams per region and service, all on 127.0.0.1 in one process, routing by
//! `deploy/examples/three-regions.yaml`. Each run starts from that table: the demo's store and
//! caches from an earlier run are cleared.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use control_plane::ControlPlane;
use control_plane::auth::{hash_token, new_token};
use control_plane::config::ControlConfig;
use control_plane::server::Server;
use gateway::config::GatewayConfig;
use gateway::demo::DemoUpstream;
use gateway::{Gateway, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The example table the demo routes by.
pub const EXAMPLE_TABLE: &str = include_str!("../../deploy/examples/three-regions.yaml");

/// Demo services, in the order of the example table's pools.
pub const SERVICES: [&str; 3] = ["cart", "order", "item"];

/// Where everything listens.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The control plane's port.
    pub control: u16,
    /// Each region: (name, gateway port, admin port).
    pub regions: Vec<(&'static str, u16, u16)>,
    /// Upstreams on the example table's ports (127.0.0.1:18RS for region R, service S);
    /// otherwise on ports the OS picks.
    pub fixed_upstream_ports: bool,
}

impl Layout {
    /// The ports the README and the tour name.
    pub fn standard() -> Self {
        Self {
            control: 7070,
            regions: vec![("hz", 8001, 9101), ("sh", 8002, 9102), ("sz", 8003, 9103)],
            fixed_upstream_ports: true,
        }
    }

    /// Every port chosen by the OS (tests).
    pub fn ephemeral() -> Self {
        Self {
            control: 0,
            regions: vec![("hz", 0, 0), ("sh", 0, 0), ("sz", 0, 0)],
            fixed_upstream_ports: false,
        }
    }
}

/// One token per role, made fresh for each run.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// `admin`: table writes and everything else.
    pub admin: String,
    /// `operator`: plans and flips.
    pub operator: String,
    /// `viewer`: reads.
    pub viewer: String,
    /// `gateway`: what the demo's gateways use, one per region (each bound to its region's
    /// gateway).
    pub gateways: Vec<(String, String)>,
}

/// The running demo.
pub struct Demo {
    /// The control plane.
    pub control: Arc<ControlPlane>,
    /// Its API server.
    pub control_server: Server,
    /// Its URL.
    pub control_url: String,
    /// Gateways by region.
    pub gateways: Vec<(String, Gateway)>,
    /// Upstreams by (region, service).
    pub upstreams: BTreeMap<(String, String), DemoUpstream>,
    /// The demo's directory: store, caches, table, tokens, env.
    pub dir: PathBuf,
    /// The tokens.
    pub tokens: Tokens,
}

/// Clear what an earlier run left: the store and the gateways' caches.
fn clear_leftovers(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() && (name == "store" || name.starts_with("cache-")) {
            std::fs::remove_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Start the demo in `dir`.
pub async fn start(dir: &Path, wan_delay: Duration, layout: &Layout) -> Result<Demo, String> {
    clear_leftovers(dir)?;
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let mut table = EXAMPLE_TABLE.to_owned();
    let mut upstreams = BTreeMap::new();
    for (r, (region, _, _)) in layout.regions.iter().enumerate() {
        for (s, service) in SERVICES.iter().enumerate() {
            let example = format!("127.0.0.1:18{}0{}", r + 1, s + 1);
            let addr = if layout.fixed_upstream_ports {
                example.parse().map_err(|e| format!("{example}: {e}"))?
            } else {
                loopback(0)
            };
            let upstream = DemoUpstream::start_on(addr, service, region, false, None)
                .await
                .map_err(|e| format!("demo upstream {region}/{service} on {addr}: {e}"))?;
            table = table.replace(&example, &upstream.addr.to_string());
            upstreams.insert(((*region).to_owned(), (*service).to_owned()), upstream);
        }
    }
    // Bind every gateway first: the table names them all, through WAN relays when asked.
    let mut bound = Vec::new();
    for (i, &(region, port, admin_port)) in layout.regions.iter().enumerate() {
        let http = gateway::server::bind(loopback(port)).map_err(|e| {
            format!("cannot listen on 127.0.0.1:{port} for region {region}: {e} (is another demo running?)")
        })?;
        let admin = gateway::server::bind(loopback(admin_port)).map_err(|e| {
            format!("cannot listen on 127.0.0.1:{admin_port} (admin of {region}): {e}")
        })?;
        let listening = http.local_addr().map_err(|e| e.to_string())?;
        let reachable_at = if wan_delay.is_zero() {
            listening
        } else {
            wan_relay(listening, wan_delay)
                .await
                .map_err(|e| format!("WAN relay: {e}"))?
        };
        table = table.replace(
            &format!("gateways: [\"127.0.0.1:{}\"]", 8001 + i),
            &format!("gateways: [\"{reachable_at}\"]"),
        );
        bound.push((region, http, admin));
    }
    let table_path = dir.join("table.yaml");
    std::fs::write(&table_path, &table).map_err(|e| format!("{}: {e}", table_path.display()))?;

    let tokens = Tokens {
        admin: new_token(),
        operator: new_token(),
        viewer: new_token(),
        gateways: bound
            .iter()
            .map(|(region, _, _)| ((*region).to_owned(), new_token()))
            .collect(),
    };
    let mut control_text = format!(
        "listen: 127.0.0.1:{}\nstore: {{ file: {{ dir: \"{}\" }} }}\ninitial_table: \"{}\"\nreplica: demo\ntokens:\n  - {{ name: demo-admin, role: admin, sha256: {} }}\n  - {{ name: demo-operator, role: operator, sha256: {} }}\n  - {{ name: demo-viewer, role: viewer, sha256: {} }}\n",
        layout.control,
        dir.join("store").display(),
        table_path.display(),
        hash_token(&tokens.admin),
        hash_token(&tokens.operator),
        hash_token(&tokens.viewer),
    );
    for (region, token) in &tokens.gateways {
        control_text.push_str(&format!(
            "  - {{ name: demo-gateway-{region}, role: gateway, gateway_id: demo-{region}, region: {region}, sha256: {} }}\n",
            hash_token(token)
        ));
    }
    let control_config = ControlConfig::parse(&control_text, "demo control plane")?;
    let control_listener = std::net::TcpListener::bind(loopback(layout.control)).map_err(|e| {
        format!(
            "cannot listen on 127.0.0.1:{} for the control plane: {e}",
            layout.control
        )
    })?;
    let control = ControlPlane::open(control_config).await?;
    let control_server = Server::start(control.clone(), control_listener, None)?;
    let control_url = format!("http://{}", control_server.addr);
    write_private(
        &dir.join("tokens"),
        &format!(
            "admin {}\noperator {}\nviewer {}\n{}",
            tokens.admin,
            tokens.operator,
            tokens.viewer,
            tokens
                .gateways
                .iter()
                .map(|(region, token)| format!("gateway-{region} {token}\n"))
                .collect::<String>()
        ),
    )?;
    write_private(
        &dir.join("env"),
        &format!(
            "export UNITGATE_SERVER={control_url}\nexport UNITGATE_TOKEN={}\n",
            tokens.operator
        ),
    )?;

    let secret = format!(
        "{:016x}{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..),
        fastrand::u64(..)
    );
    let mut gateways = Vec::new();
    for (region, http, admin) in bound {
        let text = format!(
            "region: {region}\nlisten: {{ http: [\"{}\"] }}\nadmin: {{ listen: \"{}\" }}\ntable: {{ control_plane: {{ url: \"{control_url}\", token: \"{}\", gateway_id: demo-{region} }} }}\ncache_dir: \"{}\"\nhop_secret: \"{secret}\"\n",
            http.local_addr().map_err(|e| e.to_string())?,
            admin.local_addr().map_err(|e| e.to_string())?,
            tokens
                .gateways
                .iter()
                .find(|(r, _)| r == region)
                .map(|(_, token)| token.as_str())
                .unwrap_or_default(),
            dir.join(format!("cache-{region}")).display(),
        );
        let config = GatewayConfig::parse(&text, "demo gateway")?;
        let gateway = Gateway::start(
            config,
            Listeners {
                http: vec![http],
                https: vec![],
                admin,
            },
        )
        .await?;
        gateways.push((region.to_owned(), gateway));
    }
    Ok(Demo {
        control,
        control_server,
        control_url,
        gateways,
        upstreams,
        dir: dir.to_owned(),
        tokens,
    })
}

/// A TCP relay to `target` that holds every chunk for `delay` in each direction: the cost of a
/// WAN link between regions, in user space (no netem needed).
pub async fn wan_relay(target: SocketAddr, delay: Duration) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((inbound, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::join!(delayed_copy(ri, wo, delay), delayed_copy(ro, wi, delay));
            });
        }
    });
    Ok(addr)
}

async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tokio::time::sleep(delay).await;
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// What the demo prints: where things run, the tokens, and what to try.
pub fn tour(demo: &Demo, wan_delay: Duration) -> String {
    let mut out = String::from("unitgate demo: a control plane and three regions on 127.0.0.1\n\n");
    out.push_str(&format!(
        "  control plane  {}   (store: {})\n  console        {}/console/   (sign in with a token below)\n",
        demo.control_url,
        demo.dir.join("store").display(),
        demo.control_url,
    ));
    let gateway_of = |region: &str| {
        demo.gateways
            .iter()
            .find(|(r, _)| r == region)
            .map(|(_, g)| g.http_addrs[0].to_string())
            .unwrap_or_default()
    };
    for (region, gateway) in &demo.gateways {
        out.push_str(&format!(
            "  region {region}      gateway http://{}  admin http://{}\n",
            gateway.http_addrs[0], gateway.admin_addr
        ));
        for service in SERVICES {
            if let Some(upstream) = demo.upstreams.get(&(region.clone(), service.to_owned())) {
                out.push_str(&format!(
                    "                 {service:<5} upstream {}\n",
                    upstream.addr
                ));
            }
        }
    }
    if !wan_delay.is_zero() {
        out.push_str(&format!(
            "\n  cross-region hops go through a simulated WAN link of {} ms each way\n",
            wan_delay.as_millis()
        ));
    }
    let t = &demo.tokens;
    out.push_str(&format!(
        "\nTokens (also in {}):\n  admin     {}\n  operator  {}\n  viewer    {}\n",
        demo.dir.join("tokens").display(),
        t.admin,
        t.operator,
        t.viewer,
    ));
    for (region, token) in &t.gateways {
        out.push_str(&format!("  gateway   {token} ({region})\n"));
    }
    let (hz, sh, sz) = (gateway_of("hz"), gateway_of("sh"), gateway_of("sz"));
    let hz_admin = demo
        .gateways
        .first()
        .map(|(_, g)| g.admin_addr.to_string())
        .unwrap_or_default();
    let table = demo.dir.join("table.yaml").display().to_string();
    let env = demo.dir.join("env").display().to_string();
    let unitctl = "cargo run -q --release --bin unitctl --";
    let lines = [
        "# users land in the region that owns their unit, whichever region they enter".to_owned(),
        format!("curl -s -H 'X-User-Id: 100'  http://{hz}/cart      # u01, served in hz"),
        format!(
            "curl -s -H 'X-User-Id: 4321' http://{hz}/cart      # u03: entered hz, served in sh"
        ),
        format!("curl -s --cookie 'uid=9000'   http://{sh}/order/1   # u06: served in sz"),
        "# P-class: reads stay local, writes go to the center (hz)".to_owned(),
        format!("curl -s http://{sz}/item/7"),
        format!("curl -s -X POST http://{sz}/item/7"),
        "# the same decision, dry-run".to_owned(),
        format!("{unitctl} route --table {table} --user 4321 --region hz"),
        String::new(),
        "# the control plane: units, gateways and the versions they serve".to_owned(),
        format!("source {env}"),
        format!("{unitctl} status"),
        String::new(),
        // u04, not the README's u03: both flips work, in either order.
        "# a planned flip of u04 (sh -> sz) that waits for your confirmation...".to_owned(),
        format!("{unitctl} flip {TOUR_CONFIRM_UNIT} --to sz --confirm --reason demo --wait"),
        "# ...meanwhile, in another terminal: u04 is write-frozen, writes get 503, reads flow"
            .to_owned(),
        format!("curl -s -X POST -H 'X-User-Id: 5555' http://{hz}/cart"),
        format!("curl -s -H 'X-User-Id: 5555' http://{hz}/cart"),
        format!("source {env}; {unitctl} flip-confirm <the flip id it printed>"),
        "# after it, user 5555 is served in sz; the audit log has every step".to_owned(),
        format!("curl -s -H 'X-User-Id: 5555' http://{hz}/cart"),
        format!("{unitctl} audit"),
        String::new(),
        "# a region down: every unit of sz to its standby (hz), one version for all of them..."
            .to_owned(),
        format!("{unitctl} evacuate sz --emergency --reason 'sz down (demo)' --wait"),
        format!("curl -s --cookie 'uid=9000'   http://{sh}/order/1   # u06: now served in hz"),
        "# ...and sz back: the units the evacuation moved go home, planned".to_owned(),
        format!("{unitctl} restore sz --reason 'sz back (demo)' --wait"),
        String::new(),
        "# one gateway's view: the table it serves, and its metrics".to_owned(),
        format!("curl -s http://{hz_admin}/table"),
        format!("curl -s http://{hz_admin}/metrics | grep unitgate_requests_total"),
    ];
    out.push_str("\nTry (in another terminal, from this directory):\n\n");
    for line in lines {
        out.push_str("  ");
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("\nCtrl-C stops everything. The next run starts again from the example table.\n");
    out
}

/// The unit the tour's confirmed flip moves (sh -> sz): another than the README's flip
/// (u03), so that the tour works after it.
pub const TOUR_CONFIRM_UNIT: &str = "u04";

/// Stop the gateways (letting in-flight requests finish), then the control plane.
pub async fn stop(demo: Demo) {
    for (_, gateway) in demo.gateways {
        gateway.shutdown(Duration::from_secs(5)).await;
    }
    demo.control_server.shutdown(Duration::from_secs(1)).await;
}
