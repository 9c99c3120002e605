//! Losing the control plane, a gateway's restart without it, and losing etcd: traffic keeps
//! flowing, and everything converges when the parts come back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::Method;
use unitgate_e2e::{System, flip_request, send, users_of};

/// Requests through `regions`' gateways until stopped: (sent, failed).
struct Load {
    running: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

use std::sync::Mutex;

impl Load {
    fn start(system: &System, regions: &[&str]) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed: Arc<Mutex<Vec<String>>> = Arc::default();
        let users: Vec<String> = ["u01", "u02", "u03", "u04", "u05", "u06"]
            .iter()
            .flat_map(|u| users_of(u, 4))
            .collect();
        let mut tasks = Vec::new();
        for (i, region) in regions.iter().enumerate() {
            for worker in 0..2 {
                let client = system.gateway_client(region);
                let (running, sent, failed, users) =
                    (running.clone(), sent.clone(), failed.clone(), users.clone());
                let region = (*region).to_owned();
                tasks.push(tokio::spawn(async move {
                    let mut n = i + worker;
                    while running.load(Ordering::Relaxed) {
                        n += 1;
                        let user = &users[n % users.len()];
                        let (method, path) = if n % 3 == 0 {
                            (Method::POST, "/order")
                        } else {
                            (Method::GET, "/cart")
                        };
                        let outcome =
                            send(&client, method.clone(), path, &[("x-user-id", user)]).await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        if outcome.status != 200 {
                            failed.lock().expect("failed").push(format!(
                                "{region} {method} {path} {user}: {} {}",
                                outcome.status, outcome.body
                            ));
                        }
                    }
                }));
            }
        }
        Self {
            running,
            sent,
            failed,
            tasks,
        }
    }

    /// Stop, and check that it ran and nothing failed.
    async fn stop_without_failures(self) {
        let (sent, failed) = self.stop().await;
        assert!(sent > 50, "load ran: {sent}");
        assert!(
            failed.is_empty(),
            "{} of {sent} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
    }

    async fn stop(self) -> (usize, Vec<String>) {
        self.running.store(false, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load task");
        }
        let failed = self.failed.lock().expect("failed").clone();
        (self.sent.load(Ordering::Relaxed), failed)
    }
}

async fn emergency_flip(system: &System, unit: &str, to: &str) -> String {
    let operator = system.control_client(&system.tokens.operator);
    let accepted = operator
        .start_flip(
            unit,
            &flip_request(serde_json::json!({"to": to, "mode": "emergency", "reason": "e2e"})),
        )
        .await
        .expect("flip accepted");
    accepted.id
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_the_control_plane_loses_no_request_and_gateways_converge_when_it_returns() {
    let mut system = System::start(Default::default()).await;
    let load = Load::start(&system, &["hz", "sh", "sz"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    system.kill_control();
    tokio::time::sleep(Duration::from_millis(700)).await;
    load.stop_without_failures().await;

    // A gateway restarted while the control plane is down serves its cached table.
    let serving = system.restart_gateway("hz").await;
    let serving: serde_json::Value = serde_json::from_str(&serving).expect("JSON log line");
    assert_eq!(serving["version"], 1, "{serving}");
    let hz_lines = system.gateways["hz"].process.lines().join("\n");
    assert!(hz_lines.contains("serving the cached table"), "{hz_lines}");
    let user = &users_of("u03", 1)[0];
    let outcome = send(
        &system.gateway_client("hz"),
        Method::GET,
        "/cart",
        &[("x-user-id", user)],
    )
    .await;
    assert_eq!(
        (outcome.status, outcome.body["region"].as_str()),
        (200, Some("sh")),
        "{outcome:?}"
    );

    // The control plane returns; a change reaches every gateway.
    system.restart_control().await;
    system.converged(&["hz", "sh", "sz"], 1).await;
    emergency_flip(&system, "u03", "sz").await;
    system.converged(&["hz", "sh", "sz"], 2).await;
    for region in ["hz", "sh", "sz"] {
        let outcome = send(
            &system.gateway_client(region),
            Method::GET,
            "/cart",
            &[("x-user-id", user)],
        )
        .await;
        assert_eq!(
            (
                outcome.body["region"].as_str(),
                outcome.body["table_version"].as_u64()
            ),
            (Some("sz"), Some(2)),
            "{region}: {outcome:?}"
        );
    }
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread")]
async fn losing_etcd_loses_no_request_and_no_version() {
    let mut system = System::start(unitgate_e2e::Options {
        etcd: true,
        ..Default::default()
    })
    .await;
    let operator = system.control_client(&system.tokens.operator);
    emergency_flip(&system, "u02", "sh").await;
    system.converged(&["hz", "sh", "sz"], 2).await;
    let load = Load::start(&system, &["hz", "sh", "sz"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    system.etcd.as_mut().expect("etcd").restart().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop_without_failures().await;
    // The control plane reconnects: a change goes through (retried while it reconnects).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = operator
            .start_flip(
                "u04",
                &flip_request(serde_json::json!({"to": "hz", "mode": "emergency", "reason": "after etcd came back"})),
            )
            .await;
        match attempt {
            Ok(_) => break,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the control plane did not reconnect: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    system.converged(&["hz", "sh", "sz"], 3).await;
    // No version lost.
    for v in 1..=3u64 {
        let stored = operator.table_version(v).await.expect("version kept");
        assert_eq!(stored.version, v);
    }
}
