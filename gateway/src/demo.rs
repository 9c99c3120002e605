//! `unitgate demo`: three regions on one machine — a gateway per region and demo upstreams per
//! region and service — routing by `deploy/examples/three-regions.yaml`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::GatewayConfig;
use crate::{Gateway, Listeners};

/// The example table the demo routes by.
pub const EXAMPLE_TABLE: &str = include_str!("../../deploy/examples/three-regions.yaml");

/// Demo regions with their gateway and admin ports.
pub const REGIONS: [(&str, u16, u16); 3] =
    [("hz", 8001, 9101), ("sh", 8002, 9102), ("sz", 8003, 9103)];

/// Demo services.
pub const SERVICES: [&str; 3] = ["cart", "order", "item"];

/// One request a demo upstream received.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Every header, lowercase names.
    pub headers: BTreeMap<String, String>,
}

/// An upstream that answers JSON built from what it received, and keeps a log of it.
pub struct DemoUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every request received, in order.
    pub log: Arc<Mutex<Vec<Received>>>,
}

impl DemoUpstream {
    /// Start on a free port. With `echo_headers`, answers also list every header received.
    pub async fn start(service: &str, region: &str, echo_headers: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (service, region, shared_log) = (
            Arc::<str>::from(service),
            Arc::<str>::from(region),
            log.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (service, region, log) = (service.clone(), region.clone(), shared_log.clone());
                let handler = service_fn(move |request: Request<Incoming>| {
                    let (service, region, log) = (service.clone(), region.clone(), log.clone());
                    async move {
                        Ok::<_, Infallible>(
                            answer(&service, &region, &log, echo_headers, request).await,
                        )
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), handler)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(Self { addr, log })
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

async fn answer(
    service: &str,
    region: &str,
    log: &Mutex<Vec<Received>>,
    echo_headers: bool,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let header = |name: &str| headers.get(name).cloned();
    let mut body = json!({
        "service": service,
        "region": region,
        "unit": header("x-unitgate-unit"),
        "slot": header("x-unitgate-slot").and_then(|s| s.parse::<u32>().ok()),
        "table_version": header("x-unitgate-table-version").and_then(|s| s.parse::<u64>().ok()),
        "user": header("x-unitgate-key"),
        "method": request.method().as_str(),
    });
    if echo_headers {
        body["headers"] = json!(headers);
    }
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Received {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            headers,
        });
    let _ = request.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A TCP relay to `target` that holds every chunk for `delay` in each direction: the cost of a
/// WAN link between regions, in user space.
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

/// The running demo.
pub struct Demo {
    /// Gateways by region.
    pub gateways: Vec<(String, Gateway)>,
    /// Upstreams by (region, service).
    pub upstreams: BTreeMap<(String, String), DemoUpstream>,
    /// The directory with the demo's table and caches.
    pub dir: PathBuf,
}

/// Start the demo in `dir` (created if missing; leftovers from earlier runs are reused), on the
/// ports of [`REGIONS`].
pub async fn start(dir: &Path, wan_delay: Duration) -> Result<Demo, String> {
    start_on(dir, wan_delay, &REGIONS).await
}

/// Start the demo with each region's (name, gateway port, admin port); port 0 lets the OS pick.
pub async fn start_on(
    dir: &Path,
    wan_delay: Duration,
    regions: &[(&str, u16, u16)],
) -> Result<Demo, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut upstreams = BTreeMap::new();
    let mut table = EXAMPLE_TABLE.to_owned();
    for (r, (region, _, _)) in REGIONS.iter().enumerate() {
        for (s, service) in SERVICES.iter().enumerate() {
            let upstream = DemoUpstream::start(service, region, false)
                .await
                .map_err(|e| format!("demo upstream: {e}"))?;
            table = table.replace(
                &format!("127.0.0.1:18{}0{}", r + 1, s + 1),
                &upstream.addr.to_string(),
            );
            upstreams.insert(((*region).to_owned(), (*service).to_owned()), upstream);
        }
    }
    // Bind every gateway first: cross-region traffic goes through WAN relays to them.
    let mut bound = Vec::new();
    for (i, &(region, port, admin_port)) in regions.iter().enumerate() {
        let http = crate::server::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port} for region {region}: {e} (is another demo running?)"))?;
        let admin =
            crate::server::bind(SocketAddr::from(([127, 0, 0, 1], admin_port))).map_err(|e| {
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
        // The example names gateways 127.0.0.1:8001, :8002, :8003 in region order.
        table = table.replace(
            &format!("gateways: [\"127.0.0.1:{}\"]", 8001 + i),
            &format!("gateways: [\"{reachable_at}\"]"),
        );
        bound.push((region, http, admin));
    }
    let table_path = dir.join("table.yaml");
    std::fs::write(&table_path, &table).map_err(|e| format!("{}: {e}", table_path.display()))?;
    let secret = format!(
        "{:016x}{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..),
        fastrand::u64(..)
    );
    let mut gateways = Vec::new();
    for (region, http, admin) in bound {
        let config_text = format!(
            "region: {region}\nlisten: {{ http: [\"{}\"] }}\nadmin: {{ listen: \"{}\" }}\ntable: {{ file: \"{}\" }}\ncache_dir: \"{}\"\nhop_secret: \"{secret}\"\n",
            http.local_addr().map_err(|e| e.to_string())?,
            admin.local_addr().map_err(|e| e.to_string())?,
            table_path.display(),
            dir.join(format!("cache-{region}")).display(),
        );
        let config = GatewayConfig::parse(&config_text, "demo")?;
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
        gateways,
        upstreams,
        dir: dir.to_owned(),
    })
}

/// What the demo prints: where things run and what to try.
pub fn tour(demo: &Demo, wan_delay: Duration) -> String {
    let mut out = String::from("unitgate demo: three regions on 127.0.0.1\n\n");
    for (region, gateway) in &demo.gateways {
        out.push_str(&format!(
            "  region {region}: gateway http://{}  admin http://{}\n",
            gateway.http_addrs[0], gateway.admin_addr
        ));
        for service in SERVICES {
            if let Some(upstream) = demo.upstreams.get(&(region.clone(), service.to_owned())) {
                out.push_str(&format!("      {service:<5} upstream {}\n", upstream.addr));
            }
        }
    }
    if !wan_delay.is_zero() {
        out.push_str(&format!(
            "\n  cross-region hops go through a simulated WAN link of {} ms each way\n",
            wan_delay.as_millis()
        ));
    }
    out.push_str(&format!(
        "\n  table: {} (edit it and bump `version`: every gateway reloads it)\n",
        demo.dir.join("table.yaml").display()
    ));
    out.push_str(
        "\nTry:\n\
  # user 100 is in unit u01 (hz): served in hz\n\
  curl -s -H 'X-User-Id: 100' http://127.0.0.1:8001/cart\n\
  # user 4321 is in unit u03 (sh): entering hz, the request is forwarded to sh\n\
  curl -s -H 'X-User-Id: 4321' http://127.0.0.1:8001/cart\n\
  # user 9000 is in unit u06 (sz), by cookie this time\n\
  curl -s --cookie 'uid=9000' http://127.0.0.1:8002/order/1\n\
  # P-class: reads stay in the region they enter, writes go to the center (hz)\n\
  curl -s http://127.0.0.1:8003/item/7\n\
  curl -s -X POST http://127.0.0.1:8003/item/7\n\
  # no key on a C-class route: 400 naming the sources tried\n\
  curl -s http://127.0.0.1:8001/cart\n\
  # the same decision, dry-run\n\
  cargo run -q -p unitctl -- route --table deploy/examples/three-regions.yaml --user 4321 --region hz\n\
  # the table in force, and metrics\n\
  curl -s http://127.0.0.1:9101/table\n\
  curl -s http://127.0.0.1:9101/metrics | grep unitgate_requests_total\n\
\nCtrl-C stops everything.\n",
    );
    out
}

/// Stop every gateway, letting in-flight requests finish.
pub async fn stop(demo: Demo) {
    for (_, gateway) in demo.gateways {
        gateway.shutdown(Duration::from_secs(5)).await;
    }
}
