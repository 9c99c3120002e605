//! The demo as one process: it routes as the example table says (also across a simulated WAN
//! link), its gateways follow its control plane, and its env file points `unitctl` at it.

use std::time::{Duration, Instant};

use control_api::{Client, FlipMode, FlipRecord, FlipRequest};
use http::Method;
use unitgate_demo::Layout;

const T: Duration = Duration::from_secs(10);

async fn get(addr: std::net::SocketAddr, path: &str, user: &str) -> (u16, serde_json::Value) {
    let client = Client::new(&format!("http://{addr}"), None, None).expect("client");
    let header = [(
        http::HeaderName::from_static("x-user-id"),
        http::HeaderValue::from_str(user).expect("value"),
    )];
    let reply = client
        .send(Method::GET, path, &header, None, T)
        .await
        .expect("answer");
    (
        reply.status.as_u16(),
        serde_json::from_slice(&reply.body).unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_routes_follows_its_control_plane_and_pays_the_wan_delay_once_per_hop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let delay = Duration::from_millis(40);
    let demo = unitgate_demo::start(dir.path(), delay, &Layout::ephemeral())
        .await
        .expect("demo starts");
    let hz = demo.gateways[0].1.http_addrs[0];
    let (status, local) = get(hz, "/cart", "100").await;
    assert_eq!(status, 200);
    assert_eq!(
        (local["region"].as_str(), local["unit"].as_str()),
        (Some("hz"), Some("u01"))
    );
    assert_eq!(local["table_version"], 1);
    let started = Instant::now();
    let (_, remote) = get(hz, "/cart", "4321").await;
    let remote_time = started.elapsed();
    assert_eq!(
        (remote["region"].as_str(), remote["unit"].as_str()),
        (Some("sh"), Some("u03"))
    );
    // The delay is a floor, not a speed target: each way of the hop holds data for `delay`.
    assert!(
        remote_time >= delay * 2,
        "a cross-region request skipped the WAN delay: {remote_time:?}"
    );
    let sh_cart = &demo.upstreams[&("sh".to_owned(), "cart".to_owned())];
    assert_eq!(sh_cart.received().len(), 1);
    assert_eq!(sh_cart.received()[0].headers["x-unitgate-key"], "4321");

    // The env file points unitctl at the control plane with the operator token.
    let env = std::fs::read_to_string(dir.path().join("env")).expect("env file");
    assert!(
        env.contains(&format!("UNITGATE_SERVER={}", demo.control_url)),
        "{env}"
    );
    assert!(
        env.contains(&format!("UNITGATE_TOKEN={}", demo.tokens.operator)),
        "{env}"
    );
    // A flip through the control plane reaches the gateways; its record is where the answer
    // says.
    let operator = Client::new(&demo.control_url, Some(&demo.tokens.operator), None)
        .expect("client")
        .with_timeout(T);
    let request = FlipRequest {
        to: "sz".into(),
        mode: FlipMode::Emergency,
        reason: "test".into(),
        replication_check: None,
        converge_timeout_s: None,
    };
    let accepted = operator.start_flip("u03", &request).await.expect("flip");
    for (_, gateway) in &demo.gateways {
        let mut applied = gateway.store.applied_versions();
        tokio::time::timeout(T, applied.wait_for(|v| *v >= 2))
            .await
            .expect("applied")
            .expect("alive");
    }
    let (_, moved) = get(hz, "/cart", "4321").await;
    assert_eq!(
        (moved["region"].as_str(), moved["table_version"].as_u64()),
        (Some("sz"), Some(2))
    );
    let flip: FlipRecord = operator
        .get_json(&accepted.location, T)
        .await
        .expect("flip");
    assert_eq!(flip.unit, "u03");
    // The tour's confirmed flip still has somewhere to go after the README's flip of u03.
    let tour = unitgate_demo::tour(&demo, Duration::ZERO);
    assert!(
        tour.contains(&format!(
            "flip {} --to sz --confirm",
            unitgate_demo::TOUR_CONFIRM_UNIT
        )),
        "{tour}"
    );
    let confirmed = operator
        .start_flip(
            unitgate_demo::TOUR_CONFIRM_UNIT,
            &FlipRequest {
                to: "sz".into(),
                mode: FlipMode::Planned,
                reason: "tour".into(),
                replication_check: None,
                converge_timeout_s: None,
            },
        )
        .await
        .expect("the tour's flip is accepted");
    // Let it finish before the control plane stops under it.
    let deadline = tokio::time::Instant::now() + T;
    while !operator
        .flip(&confirmed.id)
        .await
        .expect("flip")
        .state
        .is_final()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tour's flip never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The tour's evacuation and restore of sz work after both flips, in that order.
    assert!(tour.contains("/console/"), "{tour}");
    assert!(tour.contains("evacuate sz --emergency"), "{tour}");
    let evacuation = operator
        .evacuate(
            "sz",
            &control_api::EvacuateRequest {
                mode: FlipMode::Emergency,
                to: None,
                reason: "tour".into(),
                replication_check: None,
                converge_timeout_s: None,
            },
        )
        .await
        .expect("the tour's evacuation is accepted");
    let ended = |id: String| {
        let operator = operator.clone();
        async move {
            while !operator.flip(&id).await.expect("flip").state.is_final() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::time::timeout(T, ended(evacuation.id))
        .await
        .expect("the evacuation ends");
    let restore = operator
        .restore(
            "sz",
            &control_api::RestoreRequest {
                reason: "tour".into(),
                replication_check: None,
                converge_timeout_s: None,
            },
        )
        .await
        .expect("the tour's restore is accepted");
    tokio::time::timeout(T, ended(restore.id))
        .await
        .expect("the restore ends");
    unitgate_demo::stop(demo).await;

    // A second run in the same directory starts again from the example table.
    let again = unitgate_demo::start(dir.path(), Duration::ZERO, &Layout::ephemeral())
        .await
        .expect("a second run starts over leftovers");
    let (_, fresh) = get(again.gateways[0].1.http_addrs[0], "/cart", "4321").await;
    assert_eq!(
        (fresh["region"].as_str(), fresh["table_version"].as_u64()),
        (Some("sh"), Some(1))
    );
    unitgate_demo::stop(again).await;
}
