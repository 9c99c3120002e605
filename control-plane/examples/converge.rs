//! Push latency: gateway table sources (the gateway's own code, one process) follow real
//! control-plane processes; time from each operation's request to the moment the last of them
//! applied the operation's final version. Run by `bench/converge.sh`.
//!
//! Two control planes run side by side, each with its own gateways:
//! - the three-region example table (6 units): single-unit flips, the rows this bench has
//!   always had;
//! - the bench table (5 regions of 20 units, `bench/five-regions-100-units.yaml`): single-unit
//!   flips, and evacuations of a whole region (20 units, one version per step) followed by
//!   its restore.
//!
//! Every round runs each kind of operation once, in an order that rotates from round to
//! round, so that the machine's load falls on all rows alike; the per-round ratios compare
//! operations measured seconds apart.
//!
//! Usage: converge CONTROL_BIN BENCH_TABLE [GATEWAYS] [ROUNDS]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control_api::{
    Client, ClientError, EvacuateRequest, FlipAccepted, FlipMode, FlipRecord, FlipRequest,
    FlipState, ReplicationCheck, RestoreRequest,
};
use control_plane::auth::{hash_token, new_token};
use gateway::metrics::Metrics;
use gateway::store::TableStore;

type Error = Box<dyn std::error::Error>;

/// Requests refused with `409 flip_in_progress` although the previous flip of the unit read
/// as ended.
static REFUSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// A control plane and the gateway table sources following it.
struct Plane {
    child: std::process::Child,
    client: Client,
    stores: Vec<Arc<TableStore>>,
    _dir: tempfile::TempDir,
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_plane(
    control_bin: &str,
    table: &Path,
    regions: &[&str],
    gateways: usize,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Plane, Error> {
    let dir = tempfile::tempdir()?;
    let operator = new_token();
    let gateway_tokens: Vec<String> = regions.iter().map(|_| new_token()).collect();
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
    let mut child = std::process::Command::new(control_bin)
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
    let mut stores = Vec::new();
    for i in 0..gateways {
        let region = regions[i % regions.len()];
        let store = Arc::new(TableStore::new(region, None, Arc::new(Metrics::default())));
        let source_config = gateway::config::ControlPlaneSource {
            url: url.clone(),
            token_file: None,
            token: Some(gateway_tokens[i % regions.len()].clone()),
            ca_file: None,
            gateway_id: Some(format!("{region}-bench-{i}")),
        };
        let source = gateway::source::ControlPlaneSource::new(&source_config, String::new())?;
        source.fetch_now(&store, Duration::from_secs(5)).await?;
        source.spawn(&store, stop.clone());
        stores.push(store);
    }
    Ok(Plane {
        child,
        client: Client::new(&url, Some(&operator), None)?,
        stores,
        _dir: dir,
    })
}

/// One operation to time.
enum Op {
    Flip {
        unit: String,
        to: String,
        mode: FlipMode,
    },
    Evacuate {
        region: String,
        mode: FlipMode,
    },
    Restore {
        region: String,
    },
}

fn no_wait() -> Option<ReplicationCheck> {
    Some(ReplicationCheck {
        delay_s: Some(0),
        ..ReplicationCheck::default()
    })
}

impl Op {
    /// Versions it stores: one for an emergency, freeze + switch + unfreeze for a planned one.
    fn versions(&self) -> u64 {
        match self {
            Op::Flip { mode, .. } | Op::Evacuate { mode, .. } if *mode == FlipMode::Emergency => 1,
            _ => 3,
        }
    }

    async fn start(&self, client: &Client) -> Result<FlipAccepted, ClientError> {
        let planned = |mode: FlipMode| {
            if mode == FlipMode::Planned {
                no_wait()
            } else {
                None
            }
        };
        Ok(match self {
            Op::Flip { unit, to, mode } => {
                client
                    .start_flip(
                        unit,
                        &FlipRequest {
                            to: to.clone(),
                            mode: *mode,
                            reason: "bench".into(),
                            replication_check: planned(*mode),
                            converge_timeout_s: None,
                        },
                    )
                    .await?
            }
            Op::Evacuate { region, mode } => {
                client
                    .evacuate(
                        region,
                        &EvacuateRequest {
                            mode: *mode,
                            to: None,
                            reason: "bench".into(),
                            replication_check: planned(*mode),
                            converge_timeout_s: None,
                        },
                    )
                    .await?
            }
            Op::Restore { region } => {
                client
                    .restore(
                        region,
                        &RestoreRequest {
                            reason: "bench".into(),
                            replication_check: no_wait(),
                            converge_timeout_s: None,
                        },
                    )
                    .await?
            }
        })
    }
}

/// Run `op` on `plane`: milliseconds from the request until the last gateway applied its
/// final version. Returns once the flip has succeeded, and checks that it stored exactly the
/// versions timed.
async fn timed(plane: &Plane, op: &Op) -> Result<(f64, FlipRecord), Error> {
    // A flip reads as succeeded a moment before it lets go of its units' locks; a request in
    // that moment waits in admission (in 25 ms steps), or was refused with 409
    // flip_in_progress by older control planes. Every operation therefore ends with a pause
    // (below), so that none is timed waiting for the one before; should a request still be
    // refused, it is counted and reported, retried 2 ms later, and the time runs from the
    // request that was accepted.
    let (target, started, accepted) = loop {
        let before = plane.client.table().await?.version;
        let started = Instant::now();
        match op.start(&plane.client).await {
            Ok(accepted) => break (before + op.versions(), started, accepted),
            Err(e) if e.code() == Some("flip_in_progress") => {
                REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    for store in &plane.stores {
        let mut applied = store.applied_versions();
        tokio::time::timeout(Duration::from_secs(30), applied.wait_for(|v| *v >= target)).await??;
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let flip = loop {
        let flip = plane.client.flip(&accepted.id).await?;
        if flip.state.is_final() {
            break flip;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    if flip.state != FlipState::Succeeded {
        return Err(format!("flip {} ended {:?}: {:?}", flip.id, flip.state, flip.error).into());
    }
    let last = flip.steps.iter().filter_map(|s| s.version).max();
    if last != Some(target) {
        return Err(format!(
            "flip {} stored up to version {last:?}, timed up to {target}",
            flip.id
        )
        .into());
    }
    tokio::time::sleep(SETTLE).await;
    Ok((ms, flip))
}

/// The pause after each operation ended, before the next one starts.
const SETTLE: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Row {
    SmallEmergency,
    SmallPlanned,
    BigEmergency,
    BigPlanned,
    EvacuateEmergency,
    EvacuatePlanned,
    Restore,
}

const ROWS: [(Row, &str, &str, &str, u64); 7] = [
    (
        Row::SmallEmergency,
        "flip, emergency",
        "3 regions, 6 units",
        "1",
        1,
    ),
    (
        Row::SmallPlanned,
        "flip, planned",
        "3 regions, 6 units",
        "1",
        3,
    ),
    (
        Row::BigEmergency,
        "flip, emergency",
        "5 regions, 100 units",
        "1",
        1,
    ),
    (
        Row::BigPlanned,
        "flip, planned",
        "5 regions, 100 units",
        "1",
        3,
    ),
    (
        Row::EvacuateEmergency,
        "**evacuate a region, emergency**",
        "5 regions, 100 units",
        "20",
        1,
    ),
    (
        Row::EvacuatePlanned,
        "**evacuate a region, planned**",
        "5 regions, 100 units",
        "20",
        3,
    ),
    (
        Row::Restore,
        "restore the region (planned)",
        "5 regions, 100 units",
        "20",
        3,
    ),
];

#[derive(Clone, Copy)]
enum Block {
    SmallEmergency,
    SmallPlanned,
    BigPair,
    EvacuateEmergency,
    EvacuatePlanned,
}

const BLOCKS: [Block; 5] = [
    Block::SmallEmergency,
    Block::SmallPlanned,
    Block::BigPair,
    Block::EvacuateEmergency,
    Block::EvacuatePlanned,
];

const SMALL_UNITS: [&str; 6] = ["u01", "u02", "u03", "u04", "u05", "u06"];
const BIG_REGIONS: [&str; 5] = ["hz", "sh", "sz", "bj", "gz"];

/// One round: every block once, starting at block `round % 5`. Returns each measurement with
/// its row.
async fn round(small: &Plane, big: &Plane, round: usize) -> Result<Vec<(Row, f64)>, Error> {
    let mut out = Vec::new();
    for b in 0..BLOCKS.len() {
        match BLOCKS[(round + b) % BLOCKS.len()] {
            block @ (Block::SmallEmergency | Block::SmallPlanned) => {
                let unit = SMALL_UNITS[round % SMALL_UNITS.len()];
                let table = small.client.table().await?;
                let placed = table
                    .table
                    .units
                    .iter()
                    .find(|u| u.name == unit)
                    .ok_or("unit")?;
                let to = if placed.region == "hz" { "sh" } else { "hz" };
                let (mode, row) = match block {
                    Block::SmallEmergency => (FlipMode::Emergency, Row::SmallEmergency),
                    _ => (FlipMode::Planned, Row::SmallPlanned),
                };
                let op = Op::Flip {
                    unit: unit.into(),
                    to: to.into(),
                    mode,
                };
                out.push((row, timed(small, &op).await?.0));
            }
            Block::BigPair => {
                // One unit out to its standby (emergency) and back home (planned), so that
                // every region holds its 20 units again.
                let unit = format!("u{:03}", (round * 37) % 100 + 1);
                let table = big.client.table().await?;
                let placed = table
                    .table
                    .units
                    .iter()
                    .find(|u| u.name == unit)
                    .ok_or("unit")?;
                let home = placed.region.clone();
                let standby = placed.standby.clone().ok_or("standby")?;
                let out_op = Op::Flip {
                    unit: unit.clone(),
                    to: standby,
                    mode: FlipMode::Emergency,
                };
                out.push((Row::BigEmergency, timed(big, &out_op).await?.0));
                let back = Op::Flip {
                    unit,
                    to: home,
                    mode: FlipMode::Planned,
                };
                out.push((Row::BigPlanned, timed(big, &back).await?.0));
            }
            block @ (Block::EvacuateEmergency | Block::EvacuatePlanned) => {
                let region = BIG_REGIONS[round % BIG_REGIONS.len()].to_owned();
                let (mode, row) = match block {
                    Block::EvacuateEmergency => (FlipMode::Emergency, Row::EvacuateEmergency),
                    _ => (FlipMode::Planned, Row::EvacuatePlanned),
                };
                let op = Op::Evacuate {
                    region: region.clone(),
                    mode,
                };
                let (ms, flip) = timed(big, &op).await?;
                if flip.units.len() != 20 {
                    return Err(format!(
                        "evacuating {region} moved {} units, not 20",
                        flip.units.len()
                    )
                    .into());
                }
                out.push((row, ms));
                let (ms, flip) = timed(
                    big,
                    &Op::Restore {
                        region: region.clone(),
                    },
                )
                .await?;
                if flip.units.len() != 20 {
                    return Err(format!(
                        "restoring {region} moved {} units, not 20",
                        flip.units.len()
                    )
                    .into());
                }
                out.push((Row::Restore, ms));
            }
        }
    }
    Ok(out)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: converge CONTROL_BIN BENCH_TABLE [GATEWAYS] [ROUNDS]";
    let control_bin = args.next().ok_or(usage)?;
    let big_table = std::path::PathBuf::from(args.next().ok_or(usage)?);
    let gateways: usize = args.next().map_or(Ok(100), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(100), |a| a.parse())?;

    let load_before = loadavg();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let small_table =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/three-regions.yaml");
    let small = start_plane(
        &control_bin,
        &small_table,
        &["hz", "sh", "sz"],
        gateways,
        &stop_rx,
    )
    .await?;
    let big = start_plane(&control_bin, &big_table, &BIG_REGIONS, gateways, &stop_rx).await?;
    for region in BIG_REGIONS {
        let table = big.client.table().await?;
        let living = table
            .table
            .units
            .iter()
            .filter(|u| u.region == region)
            .count();
        if living != 20 {
            return Err(format!("bench table: {living} units in {region}, not 20").into());
        }
    }
    // Let every source reach its long poll before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A warm-up round (not counted), then the measured ones.
    round(&small, &big, 0).await?;
    let started = Instant::now();
    let mut all: Vec<Vec<(Row, f64)>> = Vec::new();
    for r in 0..rounds {
        all.push(round(&small, &big, r).await?);
    }
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    drop(big);
    drop(small);
    let load_after = loadavg();

    let times = |row: Row| -> Vec<f64> {
        let mut t: Vec<f64> = all
            .iter()
            .flatten()
            .filter(|(r, _)| *r == row)
            .map(|(_, ms)| *ms)
            .collect();
        t.sort_by(f64::total_cmp);
        t
    };
    println!(
        "{rounds} rounds in {:.0} s, each running every operation once in a rotating order (plus one warm-up round), each operation starting {} ms after the one before read as ended; load average {load_before} before, {load_after} after.",
        elapsed.as_secs_f64(),
        SETTLE.as_millis()
    );
    println!();
    println!(
        "| operation | table | units | versions | gateways | runs | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (row, name, table, units, versions) in ROWS {
        let t = times(row);
        println!(
            "| {name} | {table} | {units} | {versions} | {gateways} | {} | {:.1} | {:.1} | {:.1} |",
            t.len(),
            percentile(&t, 50.0),
            percentile(&t, 99.0),
            t.last().copied().unwrap_or_default()
        );
    }

    // Ratios within a round: the same few seconds of machine load on both sides.
    let ratio = |num: Row, den: Row| -> (f64, f64, f64) {
        let mut r: Vec<f64> = all
            .iter()
            .filter_map(|round| {
                let n = round.iter().find(|(r, _)| *r == num)?.1;
                let d = round.iter().find(|(r, _)| *r == den)?.1;
                Some(n / d)
            })
            .collect();
        r.sort_by(f64::total_cmp);
        (percentile(&r, 10.0), median(&r), percentile(&r, 90.0))
    };
    println!();
    println!(
        "Per-round ratios (each round's two times divided; p10 / median / p90 over the rounds):"
    );
    println!();
    println!("| ratio | p10 | median | p90 |");
    println!("|---|---:|---:|---:|");
    for (name, num, den) in [
        (
            "evacuation (20 units) / flip of one unit, 3-region table — emergency",
            Row::EvacuateEmergency,
            Row::SmallEmergency,
        ),
        (
            "evacuation (20 units) / flip of one unit, 3-region table — planned",
            Row::EvacuatePlanned,
            Row::SmallPlanned,
        ),
        (
            "evacuation (20 units) / flip of one unit, same 100-unit table — emergency",
            Row::EvacuateEmergency,
            Row::BigEmergency,
        ),
        (
            "evacuation (20 units) / flip of one unit, same 100-unit table — planned",
            Row::EvacuatePlanned,
            Row::BigPlanned,
        ),
        (
            "flip of one unit, 100-unit table / 3-region table — emergency",
            Row::BigEmergency,
            Row::SmallEmergency,
        ),
        (
            "flip of one unit, 100-unit table / 3-region table — planned",
            Row::BigPlanned,
            Row::SmallPlanned,
        ),
    ] {
        let (p10, p50, p90) = ratio(num, den);
        println!("| {name} | {p10:.2} | {p50:.2} | {p90:.2} |");
    }

    let p99 = |row: Row| percentile(&times(row), 99.0);
    let verdict = |ms: f64, limit: f64| {
        if ms < limit {
            format!("met ({ms:.1} ms)")
        } else {
            format!("**not met** ({ms:.1} ms)")
        }
    };
    let refused = REFUSED.load(std::sync::atomic::Ordering::Relaxed);
    if refused > 0 {
        println!();
        println!(
            "{refused} requests (warm-up included) were refused with 409 flip_in_progress just after the previous flip of the same units read as succeeded; each was retried 2 ms later and timed from the accepted request."
        );
    }
    println!();
    println!(
        "Targets for evacuating a region of 20 units to the last of {gateways} gateways: emergency p99 under 150 ms — {}; planned (replication delay 0) p99 under 300 ms — {}.",
        verdict(p99(Row::EvacuateEmergency), 150.0),
        verdict(p99(Row::EvacuatePlanned), 300.0)
    );
    Ok(())
}
