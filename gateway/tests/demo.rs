//! The demo routes as the example table says, also across a simulated WAN link.

mod support;

use std::time::{Duration, Instant};

use support::{client, request, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_each_region_and_pays_the_wan_delay_once_per_hop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let regions = [("hz", 0, 0), ("sh", 0, 0), ("sz", 0, 0)];
    let delay = Duration::from_millis(40);
    let demo = gateway::demo::start_on(dir.path(), delay, &regions)
        .await
        .expect("demo starts");
    let hz = demo.gateways[0].1.http_addrs[0];
    let client = client();
    let get = |user: &'static str| {
        let client = client.clone();
        async move {
            let started = Instant::now();
            let (_, _, body) =
                send(&client, request("GET", hz, "/cart", &[("x-user-id", user)])).await;
            (body, started.elapsed())
        }
    };
    let (local, _) = get("100").await;
    assert_eq!(
        (local["region"].as_str(), local["unit"].as_str()),
        (Some("hz"), Some("u01"))
    );
    let (remote, remote_time) = get("4321").await;
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
    gateway::demo::stop(demo).await;
}
