//! Cross-region forwarding over a (simulated) WAN: a request entering the wrong region is
//! served by the owning region with exactly one extra hop, under one trace id that both
//! gateways' access logs show; stress-test traffic is routed alike, tagged and counted apart.

use std::time::{Duration, Instant};

use http::Method;
use unitgate_e2e::{Options, System, send, users_of};

fn access_line(system: &System, region: &str, key: &str) -> Vec<serde_json::Value> {
    system
        .access_log(region)
        .into_iter()
        .filter(|l| l["key"] == key)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_in_the_wrong_region_takes_one_hop_under_one_trace() {
    let delay = Duration::from_millis(30);
    let system = System::start(Options {
        etcd: false,
        wan_delay: Some(delay),
        ..Options::default()
    })
    .await;
    let user = users_of("u03", 1).remove(0);
    let hz = system.gateway_client("hz");

    let started = Instant::now();
    let outcome = send(&hz, Method::GET, "/cart", &[("x-user-id", &user)]).await;
    let took = started.elapsed();
    assert_eq!(
        (outcome.status, outcome.body["region"].as_str()),
        (200, Some("sh")),
        "{outcome:?}"
    );
    // The WAN link is paid once each way: a floor, not a speed target.
    assert!(took >= delay * 2, "{took:?}");

    // Both access logs show the request under the same trace id: hz forwarded it, sh served
    // it after one hop.
    for region in ["hz", "sh"] {
        system.gateways[region]
            .process
            .wait_line("the access-log line", |l| {
                l.contains("unitgate::access") && l.contains(&format!("\"key\":\"{user}\""))
            })
            .await;
    }
    let entry = access_line(&system, "hz", &user);
    let owner = access_line(&system, "sh", &user);
    assert_eq!((entry.len(), owner.len()), (1, 1), "{entry:?} {owner:?}");
    let (entry, owner) = (&entry[0], &owner[0]);
    assert_eq!(entry["forwarded_to"], "sh");
    assert_eq!(entry["hops_in"], 0);
    assert_eq!(owner["hops_in"], 1);
    assert_eq!(owner["forwarded_to"], "");
    assert_eq!(owner["region"], "sh");
    let trace = entry["trace_id"].as_str().expect("trace id");
    assert_eq!(trace.len(), 32);
    assert_eq!(owner["trace_id"], trace, "one trace across the hop");
    assert!(
        access_line(&system, "sz", &user).is_empty(),
        "no other gateway saw it"
    );
    system.wait_received("sh", "cart", 1).await;
    let served = system.received("sh", "cart");
    assert_eq!(served.len(), 1);
    assert!(served[0].headers["traceparent"].contains(trace));

    // A caller's trace is kept end to end.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{caller_trace}-00f067aa0ba902b7-01");
    let user2 = users_of("u04", 1).remove(0);
    send(
        &hz,
        Method::GET,
        "/cart",
        &[("x-user-id", &user2), ("traceparent", &traceparent)],
    )
    .await;
    // Each gateway's output is read as it comes: wait for both lines before reading them.
    for region in ["hz", "sh"] {
        system.gateways[region]
            .process
            .wait_line("the caller's trace id", |l| {
                l.contains("unitgate::access") && l.contains(caller_trace)
            })
            .await;
    }
    assert_eq!(
        access_line(&system, "hz", &user2)[0]["trace_id"],
        caller_trace
    );

    // Stress-test traffic: the same route, tagged for the upstream, counted apart.
    let user3 = users_of("u03", 2).remove(1);
    let stressed = send(
        &hz,
        Method::GET,
        "/cart",
        &[("x-user-id", &user3), ("x-stress-test", "1")],
    )
    .await;
    assert_eq!(
        (stressed.status, stressed.body["region"].as_str()),
        (200, Some("sh"))
    );
    system.wait_received("sh", "cart", 2).await;
    let tagged = system.received("sh", "cart");
    let tagged = tagged
        .iter()
        .find(|r| r.headers.get("x-unitgate-key") == Some(&user3))
        .expect("stress request");
    assert_eq!(
        tagged.headers.get("x-unitgate-stress").map(String::as_str),
        Some("1")
    );
    let admin = control_api::Client::new(
        &format!("http://{}", system.gateways["sh"].admin),
        None,
        None,
    )
    .expect("client");
    let metrics = admin
        .send(Method::GET, "/metrics", &[], None, unitgate_e2e::T)
        .await
        .expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("unitgate_requests_total{")
                && l.contains("stress=\"true\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}
