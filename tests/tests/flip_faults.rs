//! Planned flips right after the control plane was killed and restarted, while a gateway has
//! not come back yet: the control plane remembers its fleet across the restart, so the flip
//! waits for the missing gateway (or rolls back naming it) instead of finishing with whichever
//! gateways reconnected first.
//!
//! The late gateway is the one of the unit's new region (`sz`): had the flip gone on without
//! it, the unit's traffic would have been sent to a region whose gateway is down (or serves a
//! table from before the flip), and its access log is where writes served in the wrong place
//! would show. The load covers the units living in the other regions (`u01`..`u04`): a unit
//! living in the late region is unreachable while its gateway is down, whatever the flip does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use control_api::{
    Client, FlipRecord, FlipState, FlipStep, GatewayStatus, StepName, StepOutcome, now_ms,
};
use http::Method;
use unitgate_e2e::{REGIONS, System, T, flip_request, send, users_of};

/// The unit that moves, from where to where.
const UNIT: &str = "u03";
const FROM: &str = "sh";
const TO: &str = "sz";
/// The gateway that is down across the control plane's restart.
const LATE: &str = "sz";
const LATE_ID: &str = "sz-gw";
/// Units under load: every unit not living in the late region.
const LOADED_UNITS: [&str; 4] = ["u01", "u02", "u03", "u04"];

#[derive(Debug, Clone)]
struct Sample {
    unit: &'static str,
    write: bool,
    /// The gateway the request entered.
    region: &'static str,
    status: u16,
    version: Option<u64>,
    /// The trace id the client sent (`traceparent`): the request's access-log lines, on every
    /// gateway it crossed, carry it.
    trace: String,
    /// When the answer came, ms since the epoch.
    at_ms: u64,
}

/// Mixed reads and writes (`/cart`, GET and POST alternating) for the users of
/// [`LOADED_UNITS`], spread over the three gateways, as the load of
/// `a_planned_flip_under_load_freezes_only_the_moving_units_writes` in `flips.rs`; requests
/// meant for the late gateway go to the next region while it is marked down.
struct Load {
    running: Arc<AtomicBool>,
    late_down: Arc<AtomicBool>,
    late_in_flight: Arc<AtomicUsize>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(system: &System) -> Self {
        let users: Vec<(String, &'static str)> = LOADED_UNITS
            .iter()
            .flat_map(|u| users_of(u, 40).into_iter().map(move |user| (user, *u)))
            .collect();
        let running = Arc::new(AtomicBool::new(true));
        let late_down = Arc::new(AtomicBool::new(false));
        let late_in_flight = Arc::new(AtomicUsize::new(0));
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        // Trace ids unique to this run.
        let run = now_ms() & 0xffff_ffff;
        let mut tasks = Vec::new();
        for worker in 0..8usize {
            let mine: Vec<(String, &'static str)> =
                users.iter().skip(worker).step_by(8).cloned().collect();
            let clients: Vec<(&'static str, Client)> = REGIONS
                .iter()
                .map(|r| (*r, system.gateway_client(r)))
                .collect();
            let (running, late_down, late_in_flight, samples) = (
                running.clone(),
                late_down.clone(),
                late_in_flight.clone(),
                samples.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut n = worker;
                let mut seq = 0u64;
                while running.load(Ordering::SeqCst) {
                    for (user, unit) in &mine {
                        n += 1;
                        seq += 1;
                        let write = n % 2 == 0;
                        let method = if write { Method::POST } else { Method::GET };
                        let mut pick = n % clients.len();
                        // Counted in flight before looking at the flag: once the test saw the
                        // flag set and nothing in flight, no request goes to the late gateway.
                        let mut to_late = false;
                        if clients[pick].0 == LATE {
                            late_in_flight.fetch_add(1, Ordering::SeqCst);
                            if late_down.load(Ordering::SeqCst) {
                                late_in_flight.fetch_sub(1, Ordering::SeqCst);
                                pick = (pick + 1) % clients.len();
                            } else {
                                to_late = true;
                            }
                        }
                        let (region, client) = &clients[pick];
                        let trace = format!("{run:08x}{worker:08x}{seq:016x}");
                        let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
                        let outcome = send(
                            client,
                            method,
                            "/cart",
                            &[("x-user-id", user), ("traceparent", &traceparent)],
                        )
                        .await;
                        if to_late {
                            late_in_flight.fetch_sub(1, Ordering::SeqCst);
                        }
                        samples.lock().expect("samples").push(Sample {
                            unit,
                            write,
                            region,
                            status: outcome.status,
                            version: outcome.body["table_version"].as_u64(),
                            trace,
                            at_ms: now_ms(),
                        });
                    }
                }
            }));
        }
        Self {
            running,
            late_down,
            late_in_flight,
            samples,
            tasks,
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("samples").clone()
    }

    /// Wait until `done` holds for the samples so far.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Sample]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if done(&self.samples()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "load: no {what} in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop sending to the late gateway, and wait until nothing is in flight to it.
    async fn leave_late_gateway(&self) {
        self.late_down.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.late_in_flight.load(Ordering::SeqCst) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "requests to {LATE} still in flight"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn use_late_gateway(&self) {
        self.late_down.store(false, Ordering::SeqCst);
    }

    async fn stop(self) -> Vec<Sample> {
        self.running.store(false, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("load task");
        }
        self.samples.lock().expect("samples").clone()
    }
}

/// One access-log line of a gateway.
#[derive(Debug, Clone)]
struct Access {
    /// The gateway's region.
    gateway: &'static str,
    method: String,
    status: u16,
    unit: String,
    /// Where it was sent on; empty when served by this region's upstreams.
    forwarded_to: String,
    hops_in: u64,
    /// The table version the gateway served it with.
    version: u64,
    trace: String,
    /// When the gateway took the request and when it logged it, ms since the epoch.
    start_ms: u64,
    end_ms: u64,
}

impl Access {
    fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }

    fn served_here(&self) -> bool {
        self.forwarded_to.is_empty()
    }
}

/// The access-log lines among a gateway's output lines.
fn access_lines(gateway: &'static str, lines: &[String]) -> Vec<Access> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "unitgate::access")
        .map(|v| {
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            let end_ms = rfc3339_ms(v["timestamp"].as_str().unwrap_or_default())
                .unwrap_or_else(|| panic!("access-log timestamp: {v}"));
            let duration_ms = v["duration_us"].as_u64().expect("duration_us") / 1000;
            Access {
                gateway,
                method: text("method"),
                status: u16::try_from(v["status"].as_u64().expect("status")).expect("status"),
                unit: text("unit"),
                forwarded_to: text("forwarded_to"),
                hops_in: v["hops_in"].as_u64().expect("hops_in"),
                version: v["version"].as_u64().expect("version"),
                trace: text("trace_id"),
                start_ms: end_ms.saturating_sub(duration_ms),
                end_ms,
            }
        })
        .collect()
}

/// `2025-01-02T03:04:05.123456Z` (tracing's UTC timestamps) as ms since the epoch.
fn rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = s.get(20..s.len() - 1).unwrap_or("");
    let ms = frac
        .get(..3.min(frac.len()))
        .filter(|f| !f.is_empty())
        .map_or(Some(0), |f| {
            f.parse::<i64>()
                .ok()
                .map(|v| v * 10i64.pow(3 - f.len() as u32))
        })?;
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms).ok()
}

async fn start_flip(system: &System, converge_timeout_s: u64, replication_delay_s: u64) -> String {
    let operator = system.control_client(&system.tokens.operator);
    let accepted = operator
        .start_flip(
            UNIT,
            &flip_request(serde_json::json!({
                "to": TO,
                "mode": "planned",
                "reason": "e2e: flip right after a control-plane restart",
                "replication_check": {"delay_s": replication_delay_s},
                "converge_timeout_s": converge_timeout_s,
            })),
        )
        .await
        .expect("flip accepted");
    accepted.id
}

async fn flip_record(system: &System, id: &str) -> FlipRecord {
    system
        .control_client(&system.tokens.operator)
        .flip(id)
        .await
        .expect("flip record")
}

async fn fleet(system: &System) -> Vec<GatewayStatus> {
    system
        .control_client(&system.tokens.operator)
        .gateways()
        .await
        .expect("gateways")
}

/// What a gateway says it serves, from its own admin listener (`/table`).
async fn admin_table(system: &System, region: &str) -> Option<serde_json::Value> {
    let admin = Client::new(
        &format!("http://{}", system.gateways[region].admin),
        None,
        None,
    )
    .expect("admin client");
    admin.get_json("/table", T).await.ok()
}

async fn admin_version(system: &System, region: &str) -> Option<u64> {
    admin_table(system, region).await?["version"].as_u64()
}

/// Wait until the control plane's file store records (`gateways.json`, written within a second
/// of a change) that every gateway serves `version`.
async fn fleet_stored(system: &System, version: u64) {
    let path = system.dir.path().join("store").join("gateways.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stored: Vec<GatewayStatus> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let done = REGIONS.iter().all(|r| {
            stored
                .iter()
                .any(|g| g.id == format!("{r}-gw") && g.applied_version >= version)
        });
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stored fleet does not show version {version} everywhere: {stored:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A write to the unit on its way through `FROM`'s gateway, counted in flight there: its head
/// and the first of its body's two bytes are sent; the caller sends the last, or not.
async fn slow_write(system: &System) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let user = users_of(UNIT, 1).remove(0);
    let mut client = tokio::net::TcpStream::connect(system.gateways[FROM].http)
        .await
        .expect("connect");
    client
        .write_all(
            format!(
                "POST /cart HTTP/1.1\r\nHost: shop\r\nX-User-Id: {user}\r\nContent-Length: 2\r\n\r\nx"
            )
            .as_bytes(),
        )
        .await
        .expect("head and a byte");
    while metric(system, FROM, "unitgate_writes_in_flight").await != Some(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
}

/// The value of the metric `name` (without labels) on `region`'s gateway.
async fn metric(system: &System, region: &str, name: &str) -> Option<u64> {
    let admin = Client::new(
        &format!("http://{}", system.gateways[region].admin),
        None,
        None,
    )
    .expect("admin client");
    let reply = admin
        .send(Method::GET, "/metrics", &[], None, T)
        .await
        .expect("metrics");
    String::from_utf8_lossy(&reply.body).lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse::<u64>()
            .ok()
    })
}

fn step(flip: &FlipRecord, name: StepName) -> &FlipStep {
    flip.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name:?} step: {flip:#?}"))
}

fn step_version(flip: &FlipRecord, name: StepName) -> u64 {
    step(flip, name).version.expect("step version")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flip_right_after_a_control_plane_restart_waits_for_a_gateway_not_back_yet() {
    let test_start_ms = now_ms();
    let mut system = System::start(Default::default()).await;
    // The control plane has heard from every gateway, so its stored fleet holds them all.
    system.converged(&REGIONS, 1).await;
    fleet_stored(&system, 1).await;
    let load = Load::start(&system);
    // Version 1 under load first: the old region takes the unit's writes, the late gateway
    // takes traffic.
    load.wait_for("u03 writes through every gateway", |samples| {
        REGIONS.iter().all(|r| {
            samples
                .iter()
                .filter(|s| s.unit == UNIT && s.write && s.status == 200 && s.region == *r)
                .count()
                >= 5
        })
    })
    .await;

    // The late gateway dies, then the control plane (SIGKILL); the control plane comes back
    // and at once a planned flip starts.
    load.leave_late_gateway().await;
    system.kill_gateway(LATE);
    system.kill_control();
    system.restart_control().await;
    let control_started_ms = now_ms();
    let id = start_flip(&system, 20, 1).await;

    // The flip waits at converge_freeze: the live gateways serve the freeze version (by their
    // own admin listeners, and as the control plane knows), and still it waits for the late one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let frozen = loop {
        let flip = flip_record(&system, &id).await;
        assert!(
            !flip.state.is_final(),
            "the flip ended while {LATE_ID} was down: {flip:#?}"
        );
        if let Some(converge) = flip
            .steps
            .iter()
            .find(|s| s.name == StepName::ConvergeFreeze)
        {
            assert_eq!(
                converge.outcome,
                StepOutcome::Running,
                "converge_freeze ended while {LATE_ID} was down: {flip:#?}"
            );
            let frozen = step_version(&flip, StepName::Freeze);
            let gateways = fleet(&system).await;
            let reported = ["hz-gw", "sh-gw"].iter().all(|id| {
                gateways
                    .iter()
                    .any(|g| g.id == *id && g.applied_version >= frozen)
            });
            let mut serving = reported;
            for region in ["hz", "sh"] {
                serving &= admin_version(&system, region).await >= Some(frozen);
            }
            // And the freeze is in force for clients: the unit's writes are refused through
            // both live gateways.
            let samples = load.samples();
            let refusing = ["hz", "sh"].iter().all(|r| {
                samples.iter().any(|s| {
                    s.unit == UNIT
                        && s.write
                        && s.region == *r
                        && s.status == 503
                        && s.version == Some(frozen)
                })
            });
            if serving && refusing {
                break frozen;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the live gateways did not converge on the freeze: {flip:#?}\n{:#?}",
            fleet(&system).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Still waiting, and for the late gateway: listed, not stale, behind.
    let flip = flip_record(&system, &id).await;
    assert_eq!(flip.state, FlipState::Running, "{flip:#?}");
    let last = flip.steps.last().expect("steps");
    assert_eq!(
        (last.name, last.outcome),
        (StepName::ConvergeFreeze, StepOutcome::Running),
        "{flip:#?}"
    );
    let gateways = fleet(&system).await;
    let late = gateways
        .iter()
        .find(|g| g.id == LATE_ID)
        .unwrap_or_else(|| panic!("{LATE_ID} forgotten by the restart: {gateways:#?}"));
    assert!(
        !late.stale && late.applied_version < frozen,
        "{LATE_ID} should be expected and behind: {gateways:#?}"
    );
    println!(
        "flip {id} waits at converge_freeze (version {frozen}) {} ms after the control plane started",
        now_ms() - control_started_ms
    );

    // The late gateway comes back (within gateway_stale_after_s of the control plane's start):
    // the flip goes on and succeeds.
    let late_before_restart = system.gateways[LATE].process.lines();
    let late_restarted_ms = now_ms();
    let serving = system.restart_gateway(LATE).await;
    println!("{LATE} restarted: {serving}");
    load.use_late_gateway();
    let flip = system.wait_flip(&id).await;
    assert_eq!(flip.state, FlipState::Succeeded, "{flip:#?}");
    let (switched, unfrozen) = (
        step_version(&flip, StepName::Switch),
        step_version(&flip, StepName::Unfreeze),
    );
    let converge_freeze = step(&flip, StepName::ConvergeFreeze);
    let freeze_everywhere_ms = converge_freeze.finished_at_ms.expect("finished");
    assert!(
        freeze_everywhere_ms >= late_restarted_ms,
        "converge_freeze finished at {freeze_everywhere_ms}, before {LATE} was restarted at {late_restarted_ms}: {flip:#?}"
    );
    for (name, version) in [
        (StepName::ConvergeFreeze, frozen),
        (StepName::ConvergeSwitch, switched),
        (StepName::ConvergeUnfreeze, unfrozen),
    ] {
        assert_eq!(
            step(&flip, name).detail.as_deref(),
            Some(format!("3 live gateway(s) serve version {version}").as_str()),
            "{flip:#?}"
        );
    }
    // Every gateway serves the flip's last version: the unit in its new region, active.
    system.converged(&REGIONS, unfrozen).await;
    for region in REGIONS {
        let table = admin_table(&system, region).await.expect("table");
        let unit = table["summary"]["units"]
            .as_array()
            .expect("units")
            .iter()
            .find(|u| u["name"] == UNIT)
            .expect("unit")
            .clone();
        assert_eq!(
            (
                table["version"].as_u64(),
                unit["region"].as_str(),
                unit["state"].as_str()
            ),
            (Some(unfrozen), Some(TO), Some("active")),
            "{region}: {unit}"
        );
    }
    // Writes for the unit flow again, through every gateway, the late one included.
    load.wait_for(
        "u03 writes after the unfreeze through every gateway",
        |samples| {
            REGIONS.iter().all(|r| {
                samples.iter().any(|s| {
                    s.unit == UNIT
                        && s.write
                        && s.status == 200
                        && s.region == *r
                        && s.version >= Some(unfrozen)
                })
            })
        },
    )
    .await;
    let samples = load.stop().await;
    let test_end_ms = now_ms();

    // What the clients saw.
    assert!(samples.len() > 400, "load ran: {} requests", samples.len());
    let failed_reads: Vec<&Sample> = samples
        .iter()
        .filter(|s| !s.write && s.status != 200)
        .collect();
    assert!(
        failed_reads.is_empty(),
        "{} reads failed: {:?}",
        failed_reads.len(),
        &failed_reads[..failed_reads.len().min(5)]
    );
    let others: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.unit != UNIT && s.status != 200)
        .collect();
    assert!(others.is_empty(), "{:?}", &others[..others.len().min(5)]);
    let refused: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.unit == UNIT && s.write && s.status != 200)
        .collect();
    assert!(!refused.is_empty(), "the freeze was exercised");
    for s in &refused {
        assert_eq!(s.status, 503, "{s:?}");
        assert!(
            s.version == Some(frozen) || s.version == Some(switched),
            "503 outside the freeze: {s:?}"
        );
    }
    // The freeze lasted while the late gateway was down: writes were refused all along.
    assert!(
        refused.iter().any(|s| s.at_ms < late_restarted_ms),
        "no write for {UNIT} was refused while {LATE} was down"
    );

    // What the gateways' access logs say, the late gateway's from before its restart included.
    // Every request the load sent is in the log of the gateway it entered, and of every
    // gateway it crossed, under the trace id it was sent with; wait until the logs were read.
    let answered: Vec<&Sample> = samples.iter().filter(|s| s.status != 0).collect();
    let logs = |system: &System| -> Vec<Access> {
        let mut all = access_lines(LATE, &late_before_restart);
        for region in REGIONS {
            all.extend(access_lines(
                region,
                &system.gateways[region].process.lines(),
            ));
        }
        all
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (log, by_trace) = loop {
        let log = logs(&system);
        let mut by_trace: BTreeMap<&str, Vec<&Access>> = BTreeMap::new();
        for entry in &log {
            by_trace
                .entry(entry.trace.as_str())
                .or_default()
                .push(entry);
        }
        let missing: Vec<&&Sample> = answered
            .iter()
            .filter(|s| {
                by_trace.get(s.trace.as_str()).is_none_or(|entries| {
                    !entries
                        .iter()
                        .any(|e| e.hops_in == 0 && e.gateway == s.region)
                        || !entries.iter().any(|e| e.served_here())
                })
            })
            .collect();
        if missing.is_empty() {
            let by_trace: BTreeMap<String, Vec<Access>> = by_trace
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.into_iter().cloned().collect()))
                .collect();
            break (log, by_trace);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} answered requests are not in the access logs as entered and served: {:?}",
            missing.len(),
            answered.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for entry in &log {
        assert!(
            entry.end_ms + 1000 >= test_start_ms && entry.end_ms <= test_end_ms + 1000,
            "access-log time outside the test ({test_start_ms}..{test_end_ms}): {entry:?}"
        );
    }
    let unit_writes: Vec<&Access> = log
        .iter()
        .filter(|e| e.unit == UNIT && e.is_write())
        .collect();
    // Served by an upstream of the old region after the freeze was applied everywhere: none.
    let old_region: Vec<&&Access> = unit_writes
        .iter()
        .filter(|e| e.gateway == FROM && e.served_here() && (200..300).contains(&e.status))
        .collect();
    assert!(
        !old_region.is_empty(),
        "{UNIT} took writes in {FROM} before the flip"
    );
    for e in &old_region {
        assert!(
            e.version < frozen && e.start_ms < freeze_everywhere_ms,
            "a write for {UNIT} was served in {FROM} after the freeze (version {frozen}, applied everywhere at {freeze_everywhere_ms}): {e:?}"
        );
    }
    // Served in the new region only once it was active there; nowhere else.
    for e in unit_writes
        .iter()
        .filter(|e| e.served_here() && (200..300).contains(&e.status))
    {
        assert!(
            e.gateway == FROM || (e.gateway == TO && e.version >= unfrozen),
            "a write for {UNIT} served in {} at version {}: {e:?}",
            e.gateway,
            e.version
        );
    }
    // Each successful write, followed from the gateway it entered to where it was served.
    for s in samples
        .iter()
        .filter(|s| s.unit == UNIT && s.write && s.status == 200)
    {
        let served = by_trace[&s.trace]
            .iter()
            .find(|e| e.served_here())
            .expect("served");
        let entered_late = s.region == LATE;
        assert!(
            (served.gateway == FROM && served.start_ms < freeze_everywhere_ms)
                || (served.gateway == TO && served.version >= unfrozen),
            "{s:?} was served by {served:?}{}",
            if entered_late {
                " (via the late gateway)"
            } else {
                ""
            }
        );
    }
    // Refused writes: refused by a gateway holding the freeze or the switch.
    let refusals: Vec<&&Access> = unit_writes
        .iter()
        .filter(|e| e.served_here() && e.status == 503)
        .collect();
    assert!(!refusals.is_empty(), "the access logs show the freeze");
    for e in &refusals {
        assert!(
            e.version == frozen || e.version == switched,
            "a write for {UNIT} refused at version {}: {e:?}",
            e.version
        );
    }
    // The late gateway's log, before and after its restart, is part of the picture.
    let late_entries = access_lines(LATE, &late_before_restart);
    assert!(
        late_entries
            .iter()
            .any(|e| e.unit == UNIT && e.is_write() && e.forwarded_to == FROM && e.status == 200),
        "{LATE} forwarded writes for {UNIT} to {FROM} before it died"
    );
    assert!(
        log.iter().any(|e| e.gateway == LATE
            && e.end_ms >= late_restarted_ms
            && e.unit == UNIT
            && e.is_write()
            && e.served_here()
            && e.status == 200),
        "{LATE} served writes for {UNIT} after its restart"
    );

    // The upstreams agree: the old region's took the unit's writes only before the freeze, the
    // new region's only after the unfreeze.
    let unit_posts = |region: &str| -> Vec<u64> {
        system
            .received(region, "cart")
            .into_iter()
            .filter(|r| {
                r.method == "POST"
                    && r.headers.get("x-unitgate-unit").map(String::as_str) == Some(UNIT)
            })
            .map(|r| {
                r.headers["x-unitgate-table-version"]
                    .parse()
                    .expect("version")
            })
            .collect()
    };
    let old = unit_posts(FROM);
    assert!(!old.is_empty());
    assert!(old.iter().all(|v| *v < frozen), "{FROM} took: {old:?}");
    let new = unit_posts(TO);
    assert!(!new.is_empty());
    assert!(new.iter().all(|v| *v >= unfrozen), "{TO} took: {new:?}");
    println!(
        "{} requests, {} writes for {UNIT} refused during the flip; access-log lines: {}",
        samples.len(),
        refused.len(),
        log.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flip_right_after_a_control_plane_restart_rolls_back_naming_a_gateway_that_never_returns()
{
    let mut system = System::start(Default::default()).await;
    system.converged(&REGIONS, 1).await;
    // What the restarted control plane will know of the late gateway: it serves version 1.
    fleet_stored(&system, 1).await;
    system.kill_gateway(LATE);
    system.kill_control();
    system.restart_control().await;
    let id = start_flip(&system, 3, 0).await;
    let flip = system.wait_flip(&id).await;
    assert_eq!(flip.state, FlipState::RolledBack, "{flip:#?}");
    let error = flip.error.clone().unwrap_or_default();
    assert!(
        error.contains("timed out waiting for")
            && error.contains(&format!("{LATE_ID} ({LATE}, serves 1)")),
        "the error names the late gateway: {error}"
    );
    let converge = step(&flip, StepName::ConvergeFreeze);
    assert_eq!(converge.outcome, StepOutcome::Failed, "{flip:#?}");
    assert!(
        converge
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains(LATE_ID),
        "{flip:#?}"
    );
    let waited = converge.finished_at_ms.expect("finished") - converge.started_at_ms;
    assert!(
        waited >= 2_900,
        "converge_freeze gave up after {waited} ms, not after converge_timeout_s: {flip:#?}"
    );
    assert!(
        !flip
            .steps
            .iter()
            .any(|s| matches!(s.name, StepName::Switch | StepName::Unfreeze)),
        "{flip:#?}"
    );
    // Rolled back: the unit is where it was, active, and the live gateways serve that.
    let rollback = step_version(&flip, StepName::Rollback);
    let operator = system.control_client(&system.tokens.operator);
    let stored = operator
        .table_version(rollback)
        .await
        .expect("rollback version");
    let unit = stored
        .table
        .units
        .iter()
        .find(|u| u.name == UNIT)
        .expect("unit");
    assert_eq!(
        (unit.region.as_str(), unit.state),
        (FROM, router_rules::UnitState::Active),
        "{flip:#?}"
    );
    system.converged(&["hz", "sh"], rollback).await;
    let user = &users_of(UNIT, 1)[0];
    for region in ["hz", "sh"] {
        let outcome = send(
            &system.gateway_client(region),
            Method::POST,
            "/cart",
            &[("x-user-id", user)],
        )
        .await;
        assert_eq!(
            (
                outcome.status,
                outcome.body["region"].as_str(),
                outcome.body["table_version"].as_u64()
            ),
            (200, Some(FROM), Some(rollback)),
            "{region}: {outcome:?}"
        );
    }
    println!(
        "flip {id}: {:?} after {} ms: {error}; rollback: {:?}",
        flip.state,
        flip.finished_at_ms.unwrap_or_default() - flip.created_at_ms,
        step(&flip, StepName::ConvergeRollback).detail
    );
}

/// A gateway stopped (SIGTERM) drains, then tells the control plane it leaves: the fleet
/// forgets it and the audit log says so, so flips no longer wait for it. (One that dies
/// without saying so stays in the fleet, and flips wait for it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_gateway_leaves_the_fleet() {
    let mut system = System::start(Default::default()).await;
    let before = fleet(&system).await;
    assert!(before.iter().any(|g| g.region == "sz"), "{before:?}");
    let gateway = system.gateways.get_mut("sz").expect("sz");
    assert_eq!(gateway.process.terminate(), Some(0));
    let after = fleet(&system).await;
    assert!(after.iter().all(|g| g.region != "sz"), "{after:?}");
    assert_eq!(after.len(), before.len() - 1, "{after:?}");
    let audit = system
        .control_client(&system.tokens.operator)
        .audit(None)
        .await
        .expect("audit");
    assert!(
        audit
            .iter()
            .any(|e| e.action == "gateway.leave" && e.target.starts_with("sz")),
        "{audit:?}"
    );
}

/// A write whose body is still arriving when a flip freezes its unit keeps the freeze from
/// converging: a gateway reports the freeze as applied only once the writes its older table
/// routed to the unit are over, so the old region takes no write of the unit after the flip
/// went on (a slow body used to land there after the switch).
#[tokio::test(flavor = "multi_thread")]
async fn a_write_in_flight_holds_the_freeze_until_it_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Its grace outlasts the flip's converge timeout: the write is not ended under it.
    let system = System::start(unitgate_e2e::Options {
        moved_write_grace_ms: Some(600_000),
        ..Default::default()
    })
    .await;
    // The write is routed (counted in flight by the entry gateway) when the flip starts; the
    // body's last byte comes only once the freeze is awaited.
    let mut client = slow_write(&system).await;
    let id = start_flip(&system, 20, 0).await;
    let held = loop {
        let flip = flip_record(&system, &id).await;
        if let Some(step) = flip.steps.last()
            && step.name == StepName::ConvergeFreeze
        {
            break flip;
        }
        assert!(!flip.state.is_final(), "{flip:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The entry gateway applied the freeze but does not vouch for it yet.
    let fleet_now = fleet(&system).await;
    let freeze = held
        .steps
        .iter()
        .find(|s| s.name == StepName::Freeze)
        .and_then(|s| s.version)
        .expect("freeze version");
    loop {
        if admin_version(&system, FROM).await >= Some(freeze) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let entry_gateway = fleet_now
        .iter()
        .find(|g| g.region == FROM)
        .expect("the entry gateway");
    let reported = fleet(&system)
        .await
        .into_iter()
        .find(|g| g.id == entry_gateway.id)
        .expect("listed");
    assert!(reported.applied_version < freeze, "{reported:?}");
    let flip = flip_record(&system, &id).await;
    assert_eq!(
        flip.steps.last().map(|s| (s.name, s.outcome)),
        Some((StepName::ConvergeFreeze, StepOutcome::Running)),
        "{flip:?}"
    );
    client.write_all(b"y").await.expect("the last byte");
    let mut answer = vec![0u8; 4096];
    let n = client.read(&mut answer).await.expect("answer");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let done = loop {
        let flip = flip_record(&system, &id).await;
        if flip.state.is_final() {
            break flip;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.state, FlipState::Succeeded, "{done:?}");
}

/// A write that outlasts its grace (`timeouts.moved_write_grace_ms`) after its unit froze is
/// ended by the gateway, its client answered `503` (nothing of an answer had gone out) and its
/// connection closed: it no longer holds the flip, which goes on and succeeds instead of
/// rolling back at `converge_timeout_s`.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_that_outlasts_its_grace_is_ended_and_the_flip_goes_on() {
    use tokio::io::AsyncReadExt;
    let system = System::start(unitgate_e2e::Options {
        moved_write_grace_ms: Some(300),
        ..Default::default()
    })
    .await;
    // The body's last byte never comes.
    let mut client = slow_write(&system).await;
    let id = start_flip(&system, 20, 0).await;
    let mut answer = Vec::new();
    // The write never reached its end: the client is told to send it again, and the
    // connection closes (its body is half read).
    let read = tokio::time::timeout(T, client.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection is still open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("\r\nretry-after: "),
        "{answer}"
    );
    let done = loop {
        let flip = flip_record(&system, &id).await;
        if flip.state.is_final() {
            break flip;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(done.state, FlipState::Succeeded, "{done:?}");
    assert_eq!(
        metric(&system, FROM, "unitgate_writes_ended_total").await,
        Some(1)
    );
    assert_eq!(
        metric(&system, FROM, "unitgate_writes_in_flight").await,
        Some(0)
    );
}
