//! Flips as operators run them, with the system under load.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control_api::{FlipState, StepName};
use http::Method;
use unitgate_e2e::{REGIONS, System, flip_request, send, users_of};

#[derive(Debug, Clone)]
struct Sample {
    unit: &'static str,
    write: bool,
    status: u16,
    version: Option<u64>,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planned_flip_under_load_freezes_only_the_moving_units_writes() {
    let system = System::start(Default::default()).await;
    // 200 users over every unit; u03 moves from sh to sz.
    let units = ["u01", "u02", "u03", "u04", "u05", "u06"];
    let users: Vec<(String, &'static str)> = units
        .iter()
        .flat_map(|u| users_of(u, 34).into_iter().map(move |user| (user, *u)))
        .take(200)
        .collect();
    assert_eq!(users.len(), 200);
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut load = Vec::new();
    for worker in 0..8 {
        let mine: Vec<(String, &'static str)> =
            users.iter().skip(worker).step_by(8).cloned().collect();
        let clients: Vec<_> = REGIONS.iter().map(|r| system.gateway_client(r)).collect();
        let (samples, running) = (samples.clone(), running.clone());
        load.push(tokio::spawn(async move {
            let mut n = worker;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                for (user, unit) in &mine {
                    n += 1;
                    let write = n % 2 == 0;
                    let method = if write { Method::POST } else { Method::GET };
                    let client = &clients[n % clients.len()];
                    let outcome = send(client, method, "/cart", &[("x-user-id", user)]).await;
                    samples.lock().expect("samples").push(Sample {
                        unit,
                        write,
                        status: outcome.status,
                        version: outcome.body["table_version"].as_u64(),
                    });
                }
            }
        }));
    }
    // Let the load run on version 1 first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let operator = system.control_client(&system.tokens.operator);
    let accepted = operator
        .start_flip(
            "u03",
            &flip_request(serde_json::json!({"to": "sz", "mode": "planned", "reason": "e2e under load", "replication_check": {"delay_s": 1}})),
        )
        .await
        .expect("flip accepted");
    let flip = system.wait_flip(&accepted.id).await;
    assert_eq!(flip.state, FlipState::Succeeded, "{flip:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.expect("load");
    }
    let version = |name| {
        flip.steps
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.version)
            .expect("version")
    };
    let (frozen, switched, unfrozen) = (
        version(StepName::Freeze),
        version(StepName::Switch),
        version(StepName::Unfreeze),
    );
    let samples = samples.lock().expect("samples").clone();
    assert!(samples.len() > 400, "load ran: {} requests", samples.len());
    // Reads never fail.
    let failed_reads: Vec<&Sample> = samples
        .iter()
        .filter(|s| !s.write && s.status != 200)
        .collect();
    assert!(
        failed_reads.is_empty(),
        "{:?}",
        &failed_reads[..failed_reads.len().min(5)]
    );
    // Other units see no error at all.
    let others: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.unit != "u03" && s.status != 200)
        .collect();
    assert!(others.is_empty(), "{:?}", &others[..others.len().min(5)]);
    // Writes to the moving unit get 503 only between freeze and unfreeze.
    let refused: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.unit == "u03" && s.write && s.status != 200)
        .collect();
    assert!(!refused.is_empty(), "the freeze was exercised");
    for s in &refused {
        assert_eq!(s.status, 503, "{s:?}");
        assert!(
            s.version == Some(frozen) || s.version == Some(switched),
            "503 outside the freeze: {s:?}"
        );
    }
    let late = samples
        .iter()
        .filter(|s| s.unit == "u03" && s.write && s.status == 200 && s.version >= Some(unfrozen))
        .count();
    assert!(late > 0, "writes flowed again after the unfreeze");
    // After the switch, no write for u03 reaches the old region.
    let old_region_writes: Vec<_> = system
        .received("sh", "cart")
        .into_iter()
        .filter(|r| {
            r.method == "POST"
                && r.headers.get("x-unitgate-unit").map(String::as_str) == Some("u03")
        })
        .collect();
    assert!(
        !old_region_writes.is_empty(),
        "u03 took writes in sh before the flip"
    );
    for r in &old_region_writes {
        let v: u64 = r.headers["x-unitgate-table-version"]
            .parse()
            .expect("version");
        assert!(v < frozen, "a write for u03 reached sh at version {v}");
    }
    for r in system.received("sz", "cart").iter().filter(|r| {
        r.method == "POST" && r.headers.get("x-unitgate-unit").map(String::as_str) == Some("u03")
    }) {
        let v: u64 = r.headers["x-unitgate-table-version"]
            .parse()
            .expect("version");
        assert!(
            v >= unfrozen,
            "a write for u03 reached sz before the unfreeze, at version {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emergency_flip_moves_a_dead_regions_users_within_a_second() {
    let mut system = System::start(Default::default()).await;
    let users: Vec<(String, &str)> = ["u05", "u06"]
        .iter()
        .flat_map(|u| users_of(u, 10).into_iter().map(move |user| (user, *u)))
        .collect();
    // Region sz is lost: its gateway and upstreams die.
    system.kill_gateway("sz");
    system.kill_upstreams("sz");
    let clients = [system.gateway_client("hz"), system.gateway_client("sh")];
    let before = send(
        &clients[0],
        Method::GET,
        "/cart",
        &[("x-user-id", &users[0].0)],
    )
    .await;
    assert_ne!(before.status, 200, "sz is gone: {before:?}");
    let operator = system.control_client(&system.tokens.operator);
    let started = Instant::now();
    for unit in ["u05", "u06"] {
        operator
            .start_flip(
                unit,
                &flip_request(
                    serde_json::json!({"to": "hz", "mode": "emergency", "reason": "sz lost"}),
                ),
            )
            .await
            .expect("flip accepted");
    }
    // Sweep every user through both live regions until all are served in hz.
    loop {
        let mut all = true;
        for (user, _) in &users {
            for client in &clients {
                let outcome = send(client, Method::GET, "/cart", &[("x-user-id", user)]).await;
                all &= outcome.status == 200 && outcome.body["region"] == "hz";
            }
        }
        if all {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "users of sz still not served elsewhere"
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "all users of sz served in hz after {took:?}"
    );
}
