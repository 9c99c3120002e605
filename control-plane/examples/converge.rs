//! Push latency: 100 gateway table sources (the gateway's own code, one process) follow a
//! control-plane process; time from each flip request to the moment the last of them applied
//! the flip's final version. Run by `bench/converge.sh`.
//!
//! Usage: converge CONTROL_BIN [GATEWAYS] [FLIPS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use control_api::{Client, FlipAccepted, FlipRecord};
use control_plane::auth::{hash_token, new_token};
use gateway::metrics::Metrics;
use gateway::store::TableStore;
use http::Method;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let control_bin = args
        .next()
        .ok_or("usage: converge CONTROL_BIN [GATEWAYS] [FLIPS]")?;
    let gateways: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let flips: usize = args.next().map_or(Ok(50), |a| a.parse())?;

    let dir = tempfile::tempdir()?;
    let operator = new_token();
    let regions = ["hz", "sh", "sz"];
    let gateway_tokens: Vec<String> = regions.iter().map(|_| new_token()).collect();
    let table = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/three-regions.yaml");
    let config = dir.path().join("control.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nstore: {{ file: {{ dir: {} }} }}\ninitial_table: {}\ntokens:\n  - {{ name: ops, role: operator, sha256: {} }}\n{}",
            dir.path().join("store").display(),
            table.display(),
            hash_token(&operator),
            regions
                .iter()
                .zip(&gateway_tokens)
                .map(|(region, token)| format!(
                    "  - {{ name: gw-{region}, role: gateway, gateway_id: \"{region}-*\", region: {region}, sha256: {} }}\n",
                    hash_token(token)
                ))
                .collect::<String>()
        ),
    )?;
    let mut child = std::process::Command::new(&control_bin)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().ok_or("stdout")?),
        &mut line,
    )?;
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .ok_or("no address")?
        .to_owned();
    let url = format!("http://{addr}");

    // The gateways' table sources: the same code a gateway runs, minus the proxy.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut stores = Vec::new();
    for i in 0..gateways {
        let region = regions[i % 3];
        let store = Arc::new(TableStore::new(region, None, Arc::new(Metrics::default())));
        let source_config = gateway::config::ControlPlaneSource {
            url: url.clone(),
            token_file: None,
            token: Some(gateway_tokens[i % 3].clone()),
            ca_file: None,
            gateway_id: Some(format!("{region}-bench-{i}")),
        };
        let source = gateway::source::ControlPlaneSource::new(&source_config, String::new())?;
        source.fetch_now(&store, Duration::from_secs(5)).await?;
        source.spawn(&store, stop_rx.clone());
        stores.push(store);
    }
    let client = Client::new(&url, Some(&operator), None)?;
    // Let every source reach its long poll before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let units = ["u01", "u02", "u03", "u04", "u05", "u06"];
    let mut results = Vec::new();
    for (mode, body_of) in [
        (
            "emergency",
            (|to: &str| serde_json::json!({"to": to, "mode": "emergency", "reason": "bench"}))
                as fn(&str) -> serde_json::Value,
        ),
        (
            "planned",
            |to: &str| serde_json::json!({"to": to, "mode": "planned", "reason": "bench", "replication_check": {"delay_s": 0}}),
        ),
    ] {
        let mut times = Vec::new();
        for n in 0..flips {
            let unit = units[n % units.len()];
            let current: control_api::StoredTable =
                client.get_json("/v1/table", Duration::from_secs(5)).await?;
            let placed = current
                .table
                .units
                .iter()
                .find(|u| u.name == unit)
                .ok_or("unit")?;
            let to = if placed.region == "hz" { "sh" } else { "hz" };
            let steps = if mode == "emergency" { 1 } else { 3 };
            let target = current.version + steps;
            let started = Instant::now();
            let accepted: FlipAccepted = client
                .send_json(
                    Method::POST,
                    &format!("/v1/units/{unit}/flip"),
                    &body_of(to),
                    Duration::from_secs(5),
                )
                .await?;
            for store in &stores {
                let mut applied = store.applied_versions();
                tokio::time::timeout(Duration::from_secs(30), applied.wait_for(|v| *v >= target))
                    .await??;
            }
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            loop {
                let flip: FlipRecord = client
                    .get_json(
                        &format!("/v1/flips/{}", accepted.id),
                        Duration::from_secs(5),
                    )
                    .await?;
                if flip.state.is_final() {
                    if flip.state != control_api::FlipState::Succeeded {
                        return Err(format!(
                            "flip {} ended {:?}: {:?}",
                            flip.id, flip.state, flip.error
                        )
                        .into());
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        times.sort_by(f64::total_cmp);
        results.push((mode, times));
    }
    let _ = stop.send(true);
    let _ = child.kill();
    println!("| flip | gateways | flips | versions per flip | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (mode, times) in &results {
        println!(
            "| {mode} | {gateways} | {} | {} | {:.1} | {:.1} | {:.1} |",
            times.len(),
            if *mode == "emergency" { 1 } else { 3 },
            percentile(times, 50.0),
            percentile(times, 99.0),
            times.last().copied().unwrap_or_default()
        );
    }
    Ok(())
}
