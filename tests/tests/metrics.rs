//! What the gateways' and the control plane's `/metrics` say, read from the real processes: a
//! request forwarded between regions counts once as `entry` where it entered and once as
//! `served` where it was served, so the fleet sums of docs/operations.md count it once; the
//! process, build and table metrics hold sane values; the control-plane connection gauge
//! follows the control plane going away and coming back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use control_api::{Client, PutTable, TableText};
use http::Method;
use unitgate_e2e::{Options, REGIONS, System, send, users_of};

/// One sample of the Prometheus text format: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a `/metrics` text (label values here hold no quotes or commas).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (
                    name,
                    labels
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|l| !l.is_empty())
                        .map(|l| {
                            let (k, v) = l.split_once("=\"").expect("label");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect(),
                ),
                None => (series, BTreeMap::new()),
            };
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().unwrap_or_else(|_| panic!("value of {line}")),
            }
        })
        .collect()
}

/// The sum of `name`'s samples whose labels include every one of `labels` (a value of the
/// form `a|b` matches either, as `=~` does).
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels.iter().all(|(k, v)| {
                s.labels
                    .get(*k)
                    .is_some_and(|have| v.split('|').any(|v| v == have))
            })
        })
        .map(|s| s.value)
        .sum()
}

/// The one sample of an unlabelled metric.
fn single(samples: &[Sample], name: &str) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .collect();
    assert_eq!(found.len(), 1, "{name}: {found:?}");
    found[0]
}

async fn gateway_metrics(admin: SocketAddr) -> Vec<Sample> {
    let client = Client::new(&format!("http://{admin}"), None, None).expect("client");
    parse(&client.metrics().await.expect("gateway /metrics"))
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Poll a gateway's `/metrics` until `done` holds (the gauges change when the gateway notices
/// something, which no event outside it announces); fail after 30 s with the last text.
async fn wait_metrics(admin: SocketAddr, what: &str, done: impl Fn(&[Sample]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let samples = gateway_metrics(admin).await;
        if done(&samples) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{admin}: no {what} in 30 s: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forwarded_request_counts_once_where_it_entered_and_once_where_it_was_served() {
    let system = System::start(Options::default()).await;
    let hz = system.gateway_client("hz");
    // u03 lives in sh: entering at hz it is forwarded. u01 lives in hz: served where it enters.
    let forwarded = users_of("u03", 1).remove(0);
    let local = users_of("u01", 1).remove(0);
    let outcome = send(&hz, Method::GET, "/cart", &[("x-user-id", &forwarded)]).await;
    assert_eq!(
        (outcome.status, outcome.body["region"].as_str()),
        (200, Some("sh")),
        "{outcome:?}"
    );
    let outcome = send(&hz, Method::GET, "/cart", &[("x-user-id", &local)]).await;
    assert_eq!(
        (outcome.status, outcome.body["region"].as_str()),
        (200, Some("hz")),
        "{outcome:?}"
    );

    // A gateway counts a request before it answers it, and sh answered before hz did: the
    // counts are there by now.
    let mut fleet = BTreeMap::new();
    for region in REGIONS {
        fleet.insert(region, gateway_metrics(system.gateways[region].admin).await);
    }
    let requests = "unitgate_requests_total";
    let u03 = |hop| [("unit", "u03"), ("route", "cart"), ("hop", hop)];
    assert_eq!(
        sum(&fleet["hz"], requests, &u03("entry")),
        1.0,
        "hz forwarded it"
    );
    assert_eq!(
        sum(&fleet["hz"], requests, &[("unit", "u03"), ("region", "sh")]),
        1.0,
        "hz counts it once, under the region it went to: {:?}",
        fleet["hz"]
    );
    assert_eq!(
        sum(&fleet["sh"], requests, &u03("served")),
        1.0,
        "sh served it"
    );
    assert_eq!(
        sum(&fleet["sh"], requests, &[("unit", "u03")]),
        1.0,
        "sh counts it once: {:?}",
        fleet["sh"]
    );
    assert_eq!(
        sum(
            &fleet["hz"],
            requests,
            &[("unit", "u01"), ("hop", "local"), ("region", "hz")]
        ),
        1.0
    );
    assert_eq!(sum(&fleet["sz"], requests, &[]), 0.0, "sz saw nothing");
    for (region, hop) in [("hz", "entry"), ("hz", "local"), ("sh", "served")] {
        assert_eq!(
            sum(
                &fleet[region],
                "unitgate_request_duration_seconds_count",
                &[("route", "cart"), ("hop", hop)]
            ),
            1.0,
            "{region} {hop}"
        );
    }

    // docs/operations.md's sums over the fleet: two requests entered, two were served, one
    // of the two crossed regions; without a hop filter the forwarded one counts twice.
    let fleet_sum = |labels: &[(&str, &str)]| -> f64 {
        fleet
            .values()
            .map(|samples| sum(samples, requests, labels))
            .sum()
    };
    assert_eq!(
        fleet_sum(&[("hop", "local|entry")]),
        2.0,
        "entering the fleet"
    );
    assert_eq!(fleet_sum(&[("hop", "local|served")]), 2.0, "served");
    let served_in = |region| fleet_sum(&[("hop", "local|served"), ("region", region)]);
    assert_eq!((served_in("hz"), served_in("sh")), (1.0, 1.0));
    assert_eq!(
        fleet_sum(&[("hop", "entry")]) / fleet_sum(&[("hop", "local|entry")]),
        0.5,
        "cross-region share"
    );
    assert_eq!(
        fleet_sum(&[]),
        3.0,
        "unfiltered: the forwarded request twice"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn process_build_and_table_metrics_are_sane_and_the_connection_gauge_follows_the_control_plane()
 {
    let started = now_s();
    let mut system = System::start(Options::default()).await;
    let version = env!("CARGO_PKG_VERSION");
    let control = system.control_client(&system.tokens.admin);
    let control_metrics = parse(&control.metrics().await.expect("control plane /metrics"));

    let mut processes = vec![("control-plane".to_owned(), control_metrics)];
    for region in REGIONS {
        processes.push((
            format!("gateway {region}"),
            gateway_metrics(system.gateways[region].admin).await,
        ));
    }
    for (process, samples) in &processes {
        let rss = single(samples, "process_resident_memory_bytes");
        let open = single(samples, "process_open_fds");
        let max = single(samples, "process_max_fds");
        let cpu = single(samples, "process_cpu_seconds_total");
        let start = single(samples, "process_start_time_seconds");
        assert!(rss > 1_000_000.0, "{process}: RSS {rss}");
        assert!(
            single(samples, "process_virtual_memory_bytes") >= rss,
            "{process}"
        );
        // Listeners, the log pipes, the runtime's own descriptors at least.
        assert!(open >= 3.0 && open <= max, "{process}: {open} of {max}");
        assert!((0.0..600.0).contains(&cpu), "{process}: CPU {cpu}");
        // Started by this test (the clock's and the kernel's tick granularity allowed for).
        assert!(
            start >= started - 2.0 && start <= now_s() + 1.0,
            "{process}: started at {start}, the test at {started}"
        );
        let component = if process == "control-plane" {
            "control-plane"
        } else {
            "gateway"
        };
        assert_eq!(
            sum(
                samples,
                "unitgate_build_info",
                &[("component", component), ("version", version)]
            ),
            1.0,
            "{process}: {samples:?}"
        );
    }

    let hz = system.gateways["hz"].admin;
    let first = gateway_metrics(hz).await;
    assert_eq!(single(&first, "unitgate_table_version"), 1.0);
    let applied = single(&first, "unitgate_table_applied_timestamp_seconds");
    assert!(
        applied >= started - 1.0 && applied <= now_s() + 1.0,
        "applied at {applied}, the test started at {started}"
    );
    wait_metrics(hz, "connected = 1", |s| {
        single(s, "unitgate_control_plane_connected") == 1.0
    })
    .await;

    // A new version: the applied time moves with it.
    let stored = control.table().await.expect("table");
    let mut table = stored.table.clone();
    table.version = stored.version + 1;
    control
        .put_table(
            &TableText::of(&table),
            &PutTable {
                if_match: stored.version,
                reason: Some("metrics test"),
                force: None,
            },
        )
        .await
        .expect("version 2 stored");
    wait_metrics(hz, "version 2", |s| {
        single(s, "unitgate_table_version") == 2.0
    })
    .await;
    let second = single(
        &gateway_metrics(hz).await,
        "unitgate_table_applied_timestamp_seconds",
    );
    assert!(second >= applied, "{second} before {applied}");

    // The control plane goes away: the gateway says so; it comes back: the gateway says so.
    system.kill_control();
    wait_metrics(hz, "connected = 0", |s| {
        single(s, "unitgate_control_plane_connected") == 0.0
    })
    .await;
    let cut_off = gateway_metrics(hz).await;
    assert_eq!(
        single(&cut_off, "unitgate_table_version"),
        2.0,
        "still serving"
    );
    system.restart_control().await;
    wait_metrics(hz, "connected = 1 again", |s| {
        single(s, "unitgate_control_plane_connected") == 1.0
    })
    .await;
    let outcome = send(
        &system.gateway_client("hz"),
        Method::GET,
        "/cart",
        &[("x-user-id", &users_of("u01", 1)[0])],
    )
    .await;
    assert_eq!(outcome.status, 200, "{outcome:?}");
}
