//! Region evacuation as operators run it, against the real binaries: a planned evacuation of a
//! region of two units under mixed load, and an emergency evacuation of a region that is gone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control_api::{FlipRecord, FlipState, StepName};
use http::Method;
use unitgate_e2e::{REGIONS, System, T, send, users_of};

/// The example table's units.
const UNITS: [&str; 6] = ["u01", "u02", "u03", "u04", "u05", "u06"];

/// One request of the load.
#[derive(Debug, Clone)]
struct Sample {
    unit: &'static str,
    /// The gateway it entered by.
    entry: &'static str,
    write: bool,
    status: u16,
    /// `table_version` of the answer (the upstream's echo of the header, or the gateway's own
    /// error body).
    version: Option<u64>,
    /// The region that answered (demo upstreams name theirs).
    region: Option<String>,
    /// The `Retry-After` header.
    retry_after: Option<String>,
}

/// The flips.rs planned-flip load: 200 users over every unit, 8 workers, each request a read or
/// a write of `/cart` in turn, entering by each region's gateway in turn.
struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    running: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(system: &System) -> Self {
        let users: Vec<(String, &'static str)> = UNITS
            .iter()
            .flat_map(|u| users_of(u, 34).into_iter().map(move |user| (user, *u)))
            .take(200)
            .collect();
        assert_eq!(users.len(), 200);
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let running = Arc::new(AtomicBool::new(true));
        let mut tasks = Vec::new();
        for worker in 0..8 {
            let mine: Vec<(String, &'static str)> =
                users.iter().skip(worker).step_by(8).cloned().collect();
            let clients: Vec<_> = REGIONS
                .iter()
                .map(|r| (*r, system.gateway_client(r)))
                .collect();
            let (samples, running) = (samples.clone(), running.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = worker;
                while running.load(Ordering::Relaxed) {
                    for (user, unit) in &mine {
                        n += 1;
                        let write = n % 2 == 0;
                        let method = if write { Method::POST } else { Method::GET };
                        let (entry, client) = &clients[n % clients.len()];
                        let headers = [(
                            http::HeaderName::from_static("x-user-id"),
                            http::HeaderValue::from_str(user).expect("user id"),
                        )];
                        let sample = match client.send(method, "/cart", &headers, None, T).await {
                            Ok(reply) => {
                                let body: serde_json::Value =
                                    serde_json::from_slice(&reply.body).unwrap_or_default();
                                Sample {
                                    unit,
                                    entry,
                                    write,
                                    status: reply.status.as_u16(),
                                    version: body["table_version"].as_u64(),
                                    region: body["region"].as_str().map(str::to_owned),
                                    retry_after: reply
                                        .headers
                                        .get(http::header::RETRY_AFTER)
                                        .and_then(|v| v.to_str().ok())
                                        .map(str::to_owned),
                                }
                            }
                            Err(error) => Sample {
                                unit,
                                entry,
                                write,
                                status: 0,
                                version: None,
                                region: Some(format!("transport error: {error}")),
                                retry_after: None,
                            },
                        };
                        samples.lock().expect("samples").push(sample);
                    }
                }
            }));
        }
        Self {
            samples,
            running,
            tasks,
        }
    }

    /// Wait until the samples so far satisfy `done`.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Sample]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if done(&self.samples.lock().expect("samples")) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "load: no {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> Vec<Sample> {
        self.running.store(false, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load task");
        }
        self.samples.lock().expect("samples").clone()
    }
}

/// Microseconds since the epoch of a log line's `timestamp` (RFC 3339, UTC:
/// `2026-12-03T07:30:00.123456Z`).
fn log_micros(line: &serde_json::Value) -> i64 {
    let ts = line["timestamp"].as_str().expect("timestamp");
    let field = |range: std::ops::Range<usize>| -> i64 {
        ts.get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("timestamp {ts}"))
    };
    let (year, month, day) = (field(0..4), field(5..7), field(8..10));
    let (hour, minute, second) = (field(11..13), field(14..16), field(17..19));
    let fraction = ts[19..]
        .strip_prefix('.')
        .map(|f| f.trim_end_matches('Z'))
        .unwrap_or("");
    let micros = format!("{fraction:0<6}")[..6].parse::<i64>().unwrap_or(0);
    // Days from 1970-01-01 (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micros
}

/// A gateway's JSON log lines.
fn log_lines(system: &System, region: &str) -> Vec<serde_json::Value> {
    system.gateways[region]
        .process
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

/// Versions a gateway applied, in order, with when it first applied each (log time, µs since
/// the epoch).
fn applied(system: &System, region: &str) -> Vec<(u64, i64)> {
    let mut applied: Vec<(u64, i64)> = log_lines(system, region)
        .iter()
        .filter(|l| l["message"] == "routing table applied")
        .map(|l| (l["version"].as_u64().expect("version"), log_micros(l)))
        .collect();
    applied.dedup_by_key(|(version, _)| *version);
    applied
}

fn step_version(flip: &FlipRecord, name: StepName) -> u64 {
    flip.steps
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| s.version)
        .unwrap_or_else(|| panic!("no {name:?} version: {flip:?}"))
}

fn placement(table: &router_rules::RawTable, unit: &str) -> (String, String) {
    let u = table
        .units
        .iter()
        .find(|u| u.name == unit)
        .expect("unit in table");
    (u.region.clone(), u.state.as_str().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planned_evacuation_of_sz_under_load_freezes_only_its_units_writes_in_three_versions() {
    // sz holds u05 and u06, both with standby hz.
    planned_evacuation_under_load("sz", "hz", ["u05", "u06"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planned_evacuation_of_sh_under_load_freezes_only_its_units_writes_in_three_versions() {
    // sh holds u03 and u04, both with standby sz.
    planned_evacuation_under_load("sh", "sz", ["u03", "u04"]).await;
}

/// Evacuate `old` (planned, each unit to its standby `new`) under the planned-flip test's load:
/// 0 failed reads, no error for the units that stay, no write of a moved unit begun in `old`
/// after every gateway applied the freeze, every 503 naming the freeze or the switch version,
/// exactly three versions added.
async fn planned_evacuation_under_load(old: &str, new: &str, moved: [&'static str; 2]) {
    let system = System::start(Default::default()).await;
    let operator = system.control_client(&system.tokens.operator);
    let before = operator.table().await.expect("table").version;
    assert_eq!(before, 1);
    let is_moved = |unit: &str| moved.contains(&unit);

    let load = Load::start(&system);
    // The load runs on version 1 first, writes of the moving units served in the old region.
    load.wait_for(
        &format!("writes of {moved:?} served in {old} before the evacuation"),
        |samples| {
            moved.iter().all(|unit| {
                samples
                    .iter()
                    .filter(|s| {
                        s.unit == *unit
                            && s.write
                            && s.status == 200
                            && s.region.as_deref() == Some(old)
                    })
                    .count()
                    >= 10
            })
        },
    )
    .await;
    let started = Instant::now();
    let accepted = operator
        .evacuate(
            old,
            &serde_json::from_value(serde_json::json!({
                "mode": "planned",
                "reason": format!("e2e: {old} maintenance under load"),
                "replication_check": {"delay_s": 1}
            }))
            .expect("evacuate request"),
        )
        .await
        .expect("evacuation accepted");
    let flip = system.wait_flip(&accepted.id).await;
    let took = started.elapsed();
    assert_eq!(flip.state, FlipState::Succeeded, "{flip:?}");
    assert_eq!(
        flip.operation.as_deref(),
        Some(format!("evacuate:{old}").as_str()),
        "{flip:?}"
    );
    let moves: Vec<(String, String, String)> = flip
        .moves()
        .into_iter()
        .map(|m| (m.unit, m.from, m.to))
        .collect();
    let expected: Vec<(String, String, String)> = moved
        .iter()
        .map(|u| ((*u).to_owned(), old.to_owned(), new.to_owned()))
        .collect();
    assert_eq!(
        moves, expected,
        "every unit of {old} to its standby: {flip:?}"
    );
    let names: Vec<StepName> = flip.steps.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            StepName::Freeze,
            StepName::ConvergeFreeze,
            StepName::Replication,
            StepName::Switch,
            StepName::ConvergeSwitch,
            StepName::Unfreeze,
            StepName::ConvergeUnfreeze,
        ],
        "{flip:?}"
    );
    let (frozen, switched, unfrozen) = (
        step_version(&flip, StepName::Freeze),
        step_version(&flip, StepName::Switch),
        step_version(&flip, StepName::Unfreeze),
    );
    assert_eq!(
        (frozen, switched, unfrozen),
        (before + 1, before + 2, before + 3),
        "one version per step for both units"
    );

    // Writes of the moved units flow again, now in the new region, through every gateway.
    load.wait_for(
        &format!("writes of {moved:?} served in {new} after the unfreeze"),
        |samples| {
            moved.iter().all(|unit| {
                REGIONS.iter().all(|entry| {
                    samples
                        .iter()
                        .filter(|s| {
                            s.unit == *unit
                                && s.entry == *entry
                                && s.write
                                && s.status == 200
                                && s.region.as_deref() == Some(new)
                                && s.version >= Some(unfrozen)
                        })
                        .count()
                        >= 3
                })
            })
        },
    )
    .await;
    let samples = load.stop().await;

    // Exactly three versions added, each moving both units together.
    assert_eq!(
        operator.table().await.expect("table").version,
        before + 3,
        "exactly 3 versions added"
    );
    assert!(
        operator.table_version(before + 4).await.is_err(),
        "no fourth version"
    );
    for (version, placed) in [
        (frozen, (old, "write_frozen")),
        (switched, (new, "write_frozen")),
        (unfrozen, (new, "active")),
    ] {
        let stored = operator.table_version(version).await.expect("version");
        assert_eq!(stored.flip.as_deref(), Some(accepted.id.as_str()));
        for unit in moved {
            assert_eq!(
                placement(&stored.table, unit),
                (placed.0.to_owned(), placed.1.to_owned()),
                "{unit} in version {version}"
            );
        }
        for unit in UNITS.iter().filter(|u| !is_moved(u)) {
            let (_, state) = placement(&stored.table, unit);
            assert_eq!(state, "active", "{unit} in version {version}");
        }
    }
    // Every gateway applied exactly those three, in order.
    let (mut frozen_somewhere, mut frozen_everywhere) = (i64::MAX, i64::MIN);
    for region in REGIONS {
        let versions = applied(&system, region);
        let numbers: Vec<u64> = versions.iter().map(|(v, _)| *v).collect();
        assert_eq!(
            numbers,
            [before, frozen, switched, unfrozen],
            "{region} applied"
        );
        frozen_somewhere = frozen_somewhere.min(versions[1].1);
        frozen_everywhere = frozen_everywhere.max(versions[1].1);
    }

    eprintln!(
        "planned evacuation of {old} ({moved:?} to {new}): {} requests, evacuation {took:?} (202 to succeeded), steps: {}",
        samples.len(),
        flip.steps
            .iter()
            .map(|s| format!(
                "{} {} ms",
                s.name.as_str(),
                s.finished_at_ms.unwrap_or(s.started_at_ms) - s.started_at_ms
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(samples.len() > 400, "load ran: {} requests", samples.len());
    // Reads never fail.
    let failed_reads: Vec<&Sample> = samples
        .iter()
        .filter(|s| !s.write && s.status != 200)
        .collect();
    assert!(
        failed_reads.is_empty(),
        "{} failed reads: {:?}",
        failed_reads.len(),
        &failed_reads[..failed_reads.len().min(5)]
    );
    // Units that stay see no error at all.
    let others: Vec<&Sample> = samples
        .iter()
        .filter(|s| !is_moved(s.unit) && s.status != 200)
        .collect();
    assert!(
        others.is_empty(),
        "{} errors for units that stay: {:?}",
        others.len(),
        &others[..others.len().min(5)]
    );
    // Writes to the moving units get 503 only between freeze and unfreeze, naming the freeze or
    // the switch version, with Retry-After.
    let refused: Vec<&Sample> = samples
        .iter()
        .filter(|s| is_moved(s.unit) && s.write && s.status != 200)
        .collect();
    for unit in moved {
        assert!(
            refused.iter().any(|s| s.unit == unit),
            "the freeze of {unit} was exercised"
        );
    }
    for s in &refused {
        assert_eq!(s.status, 503, "{s:?}");
        assert!(
            s.version == Some(frozen) || s.version == Some(switched),
            "503 outside the freeze: {s:?}"
        );
        assert!(s.retry_after.is_some(), "503 without Retry-After: {s:?}");
    }
    let by_version = |v: u64| refused.iter().filter(|s| s.version == Some(v)).count();
    eprintln!(
        "503s: {} (freeze version {frozen}: {}, switch version {switched}: {})",
        refused.len(),
        by_version(frozen),
        by_version(switched)
    );
    // Every write of a moved unit answered 200 came from the old region before the freeze, or
    // from the new one after the unfreeze.
    for s in samples
        .iter()
        .filter(|s| is_moved(s.unit) && s.write && s.status == 200)
    {
        let fine = (s.region.as_deref() == Some(old) && s.version < Some(frozen))
            || (s.region.as_deref() == Some(new) && s.version >= Some(unfrozen));
        assert!(fine, "a write served outside its region's window: {s:?}");
    }

    // What the old region's upstream received: writes of the moved units only from tables before
    // the freeze; the new region's: only from the unfreeze on.
    for unit in moved {
        let writes = |region: &str| -> Vec<u64> {
            system
                .received(region, "cart")
                .into_iter()
                .filter(|r| {
                    r.method == "POST"
                        && r.headers.get("x-unitgate-unit").map(String::as_str) == Some(unit)
                })
                .map(|r| {
                    r.headers["x-unitgate-table-version"]
                        .parse()
                        .expect("version")
                })
                .collect()
        };
        let in_old = writes(old);
        assert!(!in_old.is_empty(), "{unit} took writes in {old} before");
        assert!(
            in_old.iter().all(|v| *v < frozen),
            "a write for {unit} reached {old} at versions {in_old:?}"
        );
        let in_new = writes(new);
        assert!(!in_new.is_empty(), "{unit} took writes in {new} after");
        assert!(
            in_new.iter().all(|v| *v >= unfrozen),
            "a write for {unit} reached {new} before the unfreeze, at versions {in_new:?}"
        );
    }
    // And by the clock: the old region's gateway began serving no write of a moved unit after the freeze
    // version was applied by every gateway (its access log: the request's start is the line's
    // time minus its duration).
    let served_in_old: Vec<(i64, serde_json::Value)> = log_lines(&system, old)
        .into_iter()
        .filter(|l| {
            l["target"] == "unitgate::access"
                && l["method"] == "POST"
                && l["status"] == 200
                && l["region"] == old
                && l["upstream"].as_str().is_some_and(|u| !u.is_empty())
                && l["unit"].as_str().is_some_and(is_moved)
        })
        .map(|l| {
            let start = log_micros(&l) - l["duration_us"].as_i64().expect("duration");
            (start, l)
        })
        .collect();
    assert!(
        !served_in_old.is_empty(),
        "{old}'s access log has the writes"
    );
    let last_start = served_in_old.iter().map(|(s, _)| *s).max().expect("some");
    for (start, line) in &served_in_old {
        assert!(
            *start <= frozen_everywhere,
            "a write began in {old} {} µs after every gateway applied version {frozen}: {line}",
            start - frozen_everywhere
        );
        assert!(line["version"].as_u64() < Some(frozen), "{line}");
    }
    eprintln!(
        "freeze applied by the first gateway {} µs before the last; the last write of {moved:?} served in {old} began {} µs before the freeze was applied everywhere",
        frozen_everywhere - frozen_somewhere,
        frozen_everywhere - last_start
    );
}

/// Per (entry gateway, unit): when a user of the unit was first answered by another region, and
/// the version of the gateway that served it.
type FirstAnswers = BTreeMap<(&'static str, &'static str), (Instant, u64)>;

#[tokio::test(flavor = "multi_thread")]
async fn an_emergency_evacuation_of_a_lost_region_moves_its_users_within_a_second() {
    let mut system = System::start(Default::default()).await;
    let operator = system.control_client(&system.tokens.operator);
    let before = operator.table().await.expect("table").version;
    let (lost, new, moved, live) = ("sz", "hz", ["u05", "u06"], ["hz", "sh"]);
    // Region sz is lost: its gateway and upstreams die.
    system.kill_gateway(lost);
    system.kill_upstreams(lost);

    // Probes: through each live gateway, users of each unit of sz, read after read; each
    // records when it was first answered by another region.
    let answered_elsewhere: Arc<Mutex<FirstAnswers>> = Arc::default();
    let running = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The slowest request answered while sz's units were still routed to sz, and an answer.
    let failing: Arc<Mutex<(Duration, Option<serde_json::Value>)>> = Arc::default();
    let mut probes = Vec::new();
    for entry in live {
        for unit in moved {
            let client = system.gateway_client(entry);
            let users = users_of(unit, 3);
            let (answered_elsewhere, running, sent, failing) = (
                answered_elsewhere.clone(),
                running.clone(),
                sent.clone(),
                failing.clone(),
            );
            probes.push(tokio::spawn(async move {
                let mut n = 0;
                while running.load(Ordering::Relaxed) {
                    n += 1;
                    let user = &users[n % users.len()];
                    let began = Instant::now();
                    let outcome = send(&client, Method::GET, "/cart", &[("x-user-id", user)]).await;
                    let at = Instant::now();
                    if outcome.status != 200 {
                        let mut failing = failing.lock().expect("failing");
                        failing.0 = failing.0.max(at - began);
                        failing.1.get_or_insert(serde_json::json!({
                            "status": outcome.status, "body": outcome.body
                        }));
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    if outcome.status == 200 && outcome.body["region"] != lost {
                        assert_eq!(outcome.body["region"], new, "{outcome:?}");
                        let version = outcome.body["table_version"].as_u64().unwrap_or(0);
                        answered_elsewhere
                            .lock()
                            .expect("answers")
                            .entry((entry, unit))
                            .or_insert((at, version));
                    }
                }
            }));
        }
    }
    // The probes run, and sz's users get no answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sent.load(Ordering::Relaxed) < 40 {
        assert!(tokio::time::Instant::now() < deadline, "probes did not run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        answered_elsewhere.lock().expect("answers").is_empty(),
        "sz's users served before the evacuation: {:?}",
        answered_elsewhere.lock().expect("answers")
    );

    let asked = Instant::now();
    let accepted = operator
        .evacuate(
            lost,
            &serde_json::from_value(
                serde_json::json!({"mode": "emergency", "reason": "e2e: sz lost"}),
            )
            .expect("evacuate request"),
        )
        .await
        .expect("evacuation accepted");
    let returned = Instant::now();
    let returned_wall = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_micros(),
    )
    .expect("µs");

    // Wait (with a deadline) until every probe has been answered elsewhere.
    let deadline = returned + Duration::from_secs(10);
    loop {
        if answered_elsewhere.lock().expect("answers").len() == live.len() * moved.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "users of sz still not served elsewhere 10 s after the evacuation: {:?}",
            answered_elsewhere.lock().expect("answers")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    running.store(false, Ordering::Relaxed);
    for probe in probes {
        probe.await.expect("probe");
    }
    let answered = answered_elsewhere.lock().expect("answers").clone();
    let version = before + 1;
    let mut report = Vec::new();
    for ((entry, unit), (at, served_version)) in &answered {
        let took = at.saturating_duration_since(returned);
        // The version the serving gateway (hz) had: hz may still be on version 1 when the
        // entry gateway, on version 2, sends the request there (the newer table's choice stands).
        report.push(format!("{entry}/{unit} {took:?} (hz on v{served_version})"));
        assert!(
            *at >= asked,
            "{entry}/{unit} served elsewhere before the evacuation was asked for"
        );
    }
    let applied_after: Vec<String> = live
        .iter()
        .map(|region| {
            let at = applied(&system, region)
                .iter()
                .find(|(v, _)| *v == version)
                .map(|(_, at)| *at)
                .unwrap_or_else(|| panic!("{region} applied version {version}"));
            format!("{region} {} ms", (at - returned_wall) / 1000)
        })
        .collect();
    let failing = failing.lock().expect("failing").clone();
    eprintln!(
        "emergency evacuation of sz: 202 after {:?}; version {version} applied after the 202: {}; first answer from hz after the 202: {}; slowest failing probe {:?}, e.g. {}",
        returned - asked,
        applied_after.join(", "),
        report.join(", "),
        failing.0,
        failing.1.unwrap_or_default()
    );
    for ((entry, unit), (at, _)) in &answered {
        let took = at.saturating_duration_since(returned);
        assert!(
            took < Duration::from_secs(1),
            "{entry}: a user of {unit} first served in hz {took:?} after the evacuation returned"
        );
    }

    // One version; every user of sz is served in hz through every live gateway, writes too.
    let flip = system.wait_flip(&accepted.id).await;
    eprintln!(
        "emergency evacuation flip: {:?} after {} ms, steps: {:?}",
        flip.state,
        flip.finished_at_ms.unwrap_or_default() - flip.created_at_ms,
        flip.steps
            .iter()
            .map(|s| (s.name.as_str(), s.version, s.detail.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(flip.state, FlipState::Succeeded, "{flip:?}");
    assert_eq!(flip.operation.as_deref(), Some("evacuate:sz"));
    let names: Vec<StepName> = flip.steps.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [StepName::EmergencySwitch, StepName::ConvergeEmergency],
        "{flip:?}"
    );
    assert_eq!(step_version(&flip, StepName::EmergencySwitch), version);
    assert_eq!(operator.table().await.expect("table").version, version);
    system.converged(&live, version).await;
    for entry in live {
        let client = system.gateway_client(entry);
        for unit in moved {
            for user in users_of(unit, 10) {
                for method in [Method::GET, Method::POST] {
                    let outcome =
                        send(&client, method.clone(), "/cart", &[("x-user-id", &user)]).await;
                    assert_eq!(
                        (outcome.status, outcome.body["region"].as_str()),
                        (200, Some(new)),
                        "{entry} {method} {unit} {user}: {outcome:?}"
                    );
                }
            }
        }
    }
}
