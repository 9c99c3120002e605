//! The gateway as a proxy: three regions on 127.0.0.1, real upstreams, real sockets.

mod support;

use router_rules::{DecisionReport, SimpleRequest};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_region_and_unit_match_the_dry_run_from_every_region() {
    let topo = Topology::start().await;
    let table = router_rules::load_yaml(&topo.base_table).expect("table");
    let client = client();
    for user in 0..1000u32 {
        let user = format!("{}", user * 7919 % 100_000);
        let path = if user.len() % 2 == 0 {
            "/cart/items"
        } else {
            "/order/1"
        };
        for entry in REGIONS {
            let node = topo.region(entry);
            let (status, _, body) = send(
                &client,
                request("GET", node.http, path, &[("x-user-id", &user)]),
            )
            .await;
            assert_eq!(status, 200, "{user} via {entry}: {body}");
            let dry = SimpleRequest::new("GET", path).with_header("x-user-id", &user);
            let decision = table.resolve(&dry, table.region_index(entry).expect("region"));
            let report = DecisionReport::new(&table, &decision, "GET");
            assert_eq!(
                body["region"].as_str(),
                report.region.as_deref(),
                "{user} via {entry}"
            );
            assert_eq!(
                body["unit"].as_str(),
                report.unit.as_deref(),
                "{user} via {entry}"
            );
            assert_eq!(
                body["slot"].as_u64(),
                report.slot.map(u64::from),
                "{user} via {entry}"
            );
            assert_eq!(body["user"].as_str(), Some(user.as_str()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_region_requests_take_one_authenticated_hop() {
    let topo = Topology::start().await;
    let client = client();
    // 4321 is in u03, which lives in sh. Enter at hz.
    let (status, _, body) = send(
        &client,
        request(
            "POST",
            topo.region("hz").http,
            "/order/9",
            &[
                ("x-user-id", "4321"),
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
            ],
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["region"], "sh");
    assert_eq!(body["unit"], "u03");
    let headers = &body["headers"];
    assert!(
        headers.get("x-unitgate-hop").is_none(),
        "the hop marker never reaches upstreams"
    );
    assert_eq!(headers["x-unitgate-region"], "sh");
    assert!(
        headers["traceparent"]
            .as_str()
            .is_some_and(|t| t.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"))
    );
    assert!(
        headers["x-forwarded-for"]
            .as_str()
            .is_some_and(|x| x.starts_with("127.0.0.1"))
    );
    let metrics = client
        .request(request("GET", topo.region("hz").admin, "/metrics", &[]))
        .await
        .expect("metrics");
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(metrics.into_body())
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf8");
    assert!(
        text.contains("unitgate_cross_region_forwards_total{region=\"sh\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_internal_and_hop_headers_are_ignored() {
    let topo = Topology::start().await;
    let client = client();
    let forged_hop = "v1 origin=sz version=999 hops=2 ts=0 sig=00";
    let (status, _, body) = send(
        &client,
        request(
            "GET",
            topo.region("hz").http,
            "/cart",
            &[
                ("x-user-id", "10"),
                ("x-unitgate-unit", "u06"),
                ("x-unitgate-region", "sz"),
                ("x-unitgate-key", "evil"),
                ("x-unitgate-table-version", "999"),
                ("x-unitgate-hop", forged_hop),
            ],
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["unit"], "u01");
    assert_eq!(body["region"], "hz");
    assert_eq!(body["user"], "10");
    assert_eq!(body["table_version"], 1);
    assert!(body["headers"].get("x-unitgate-hop").is_none());
    let hop_rejected = topo
        .gateway("hz")
        .metrics
        .hop_rejected
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(hop_rejected, 1);
    // A forged marker claiming two hops does not make the gateway answer 508 either.
    let (status, _, _) = send(
        &client,
        request(
            "GET",
            topo.region("hz").http,
            "/cart",
            &[("x-user-id", "4321"), ("x-unitgate-hop", forged_hop)],
        ),
    )
    .await;
    assert_eq!(status, 200);
}

/// A path is routed as the upstream will resolve it: a key taken from the path cannot be
/// swapped behind a dot segment or an escape (`/order/10/../4321` is user 4321's request, and
/// goes to 4321's unit, not 10's), and the upstream gets the path the gateway routed by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_routed_and_sent_in_the_form_the_upstream_resolves() {
    let topo = Topology::start_with(|_, t| {
        t.replace(
            "    match: { path_prefix: /order }\n    service: order\n    class: C\n    key:\n      - header: X-User-Id",
            "    match: { path_prefix: /order }\n    service: order\n    class: C\n    key:\n      - path_segment: 2",
        )
    })
    .await;
    let client = client();
    let hz = topo.region("hz").http;
    let (status, _, direct) = send(&client, request("GET", hz, "/order/4321", &[])).await;
    assert_eq!(status, 200, "{direct}");
    let (_, _, other) = send(&client, request("GET", hz, "/order/10", &[])).await;
    assert_ne!(
        direct["unit"], other["unit"],
        "the test needs users of two units"
    );
    for spelled in [
        "/order/10/../4321",
        "/order/10/%2e%2e/4321",
        "/%6Frder/./4321",
        "/order/%34%33%32%31",
        "//order//4321",
        "/order/4321;jsessionid=10",
        "/order;v=10/4321",
    ] {
        let (status, _, body) = send(&client, request("GET", hz, spelled, &[])).await;
        assert_eq!(status, 200, "{spelled}: {body}");
        assert_eq!(body["unit"], direct["unit"], "{spelled}");
        assert_eq!(body["region"], direct["region"], "{spelled}");
        assert_eq!(body["user"], "4321", "{spelled}");
    }
    let served_in = direct["region"].as_str().expect("region").to_owned();
    let paths: Vec<String> = topo.region(&served_in).upstreams["order"]
        .received()
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert!(
        paths.iter().all(|p| p.starts_with("/order/4321")
            || p.starts_with("/order;v=10/4321")
            || p == "/order/10"),
        "{paths:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_freeze_refuses_writes_and_keeps_reads() {
    let topo = Topology::start_with(|_, t| {
        t.replace(
            "state: active       # write_frozen during a flip",
            "state: write_frozen",
        )
    })
    .await;
    let client = client();
    let sz = topo.region("sz").http;
    let (status, headers, body) = send(
        &client,
        request("POST", sz, "/order", &[("x-user-id", "9000")]),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(body["error"], "unit is write-frozen");
    assert_eq!(body["unit"], "u06");
    assert_eq!(body["retry_after_s"], 2);
    let (status, _, body) = send(
        &client,
        request("GET", sz, "/order", &[("x-user-id", "9000")]),
    )
    .await;
    assert_eq!((status.as_u16(), body["unit"].as_str()), (200, Some("u06")));
    // A GET that a framework would execute as a DELETE is a write.
    let (status, _, body) = send(
        &client,
        request(
            "GET",
            sz,
            "/order",
            &[("x-user-id", "9000"), ("x-http-method-override", "DELETE")],
        ),
    )
    .await;
    assert_eq!((status.as_u16(), body["unit"].as_str()), (503, Some("u06")));
    // So is one whose override is not text (Express reads `DELETE,\xff` as DELETE), over
    // both front ends.
    let mut raw = connect_and_write(
        sz,
        b"GET /order HTTP/1.1\r\nHost: a\r\nX-User-Id: 9000\r\nX-HTTP-Method-Override: DELETE,\xff\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut answer)
        .await
        .expect("read");
    assert!(
        answer.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let mut sender = h2c(sz).await;
    let h2_request = http::Request::get("http://a/order")
        .header("x-user-id", "9000")
        .header(
            "x-http-method-override",
            http::HeaderValue::from_bytes(b"DELETE,\xff").expect("obs-text"),
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let answer = sender.send_request(h2_request).await.expect("answered");
    assert_eq!(answer.status(), 503, "over HTTP/2");
    // Other units' writes flow.
    let (status, _, _) = send(
        &client,
        request("POST", sz, "/order", &[("x-user-id", "7000")]),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        topo.region("sz").upstreams["order"]
            .received()
            .iter()
            .filter(|s| s.method == "POST")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_keys_follow_the_route_policy() {
    let topo = Topology::start_with(|_, t| {
        t.replacen(
            "missing_key: reject   # 400 naming the sources tried",
            "missing_key: center",
            1,
        )
    })
    .await;
    let client = client();
    let sz = topo.region("sz").http;
    // order: reject.
    let (status, _, body) = send(&client, request("GET", sz, "/order", &[])).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "missing routing key");
    assert_eq!(
        body["tried"],
        serde_json::json!(["header:x-user-id", "cookie:uid"])
    );
    assert_eq!(topo.region("sz").upstreams["order"].count(), 0);
    // cart: center (u01 in hz).
    let (status, _, body) = send(&client, request("GET", sz, "/cart", &[])).await;
    assert_eq!(
        (
            status.as_u16(),
            body["unit"].as_str(),
            body["region"].as_str()
        ),
        (200, Some("u01"), Some("hz"))
    );
}

/// On a route with `key_format: digits`, a key a service might read as another number is
/// refused with a 400 that says why, over HTTP/1.1 and HTTP/2, and reaches no upstream; a key
/// of digits goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_a_digits_route_refuses_reach_no_upstream() {
    let topo = Topology::start_with(|_, t| {
        t.replacen(
            "missing_key: reject   # 400 naming the sources tried",
            "missing_key: reject\n    key_format: digits",
            1,
        )
    })
    .await;
    let client = client();
    let hz = topo.region("hz").http;
    let mut h2 = h2c::<http_body_util::Full<bytes::Bytes>>(hz).await;
    for key in ["+7000", "7000.0", "0x1B58"] {
        let (status, _, body) =
            send(&client, request("POST", hz, "/cart", &[("x-user-id", key)])).await;
        assert_eq!(status, 400, "{key}: {body}");
        assert_eq!(body["error"], "invalid routing key", "{key}");
        assert_eq!(body["reason"], "not_digits", "{key}");
        assert_eq!(body["source"], "header:x-user-id", "{key}");
        let response = h2
            .send_request(request("POST", hz, "/cart", &[("x-user-id", key)]))
            .await
            .expect("h2 answer");
        assert_eq!(response.status(), 400, "{key} over HTTP/2");
    }
    for region in REGIONS {
        assert_eq!(topo.region(region).upstreams["cart"].count(), 0, "{region}");
    }
    let (status, _, body) = send(
        &client,
        request("POST", hz, "/cart", &[("x-user-id", "7000")]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["slot"], 7000, "{body}");
}

/// A route with `case_sensitive: false` routes `/CART/1` by its key as `/cart/1`, in the unit's
/// region, over either front end; by default such a path has no route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caseless_route_routes_every_spelling_of_its_path() {
    let topo = Topology::start_with(|_, t| {
        t.replacen(
            "match: { path_prefix: /cart }",
            "match: { path_prefix: /cart, case_sensitive: false }",
            1,
        )
    })
    .await;
    let client = client();
    let sz = topo.region("sz").http;
    let (status, _, body) = send(
        &client,
        request("POST", sz, "/CART/1", &[("x-user-id", "4321")]),
    )
    .await;
    let dry = router_rules::load_yaml(&topo.base_table).expect("table");
    let (unit, slot, _) = dry.unit_of_key("4321");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["unit"].as_str(), Some(&*unit.name), "{body}");
    assert_eq!(body["slot"], slot, "{body}");
    let mut h2 = h2c::<http_body_util::Full<bytes::Bytes>>(sz).await;
    let response = h2
        .send_request(request("POST", sz, "/Cart/1", &[("x-user-id", "4321")]))
        .await
        .expect("h2 answer");
    assert_eq!(response.status(), 200);

    let plain = Topology::start().await;
    let sz = plain.region("sz").http;
    let (status, _, _) = send(
        &client,
        request("POST", sz, "/CART/1", &[("x-user-id", "4321")]),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_get_404_json() {
    let topo = Topology::start().await;
    let (status, headers, body) = send(
        &client(),
        request(
            "GET",
            topo.region("hz").http,
            "/nowhere",
            &[("x-user-id", "1")],
        ),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["error"], "no route");
    assert_eq!(body["path"], "/nowhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p_class_reads_are_local_and_writes_go_to_the_center() {
    let topo = Topology::start().await;
    let client = client();
    let (_, _, read) = send(
        &client,
        request("GET", topo.region("sz").http, "/item/1", &[]),
    )
    .await;
    assert_eq!(read["region"], "sz");
    assert_eq!(read["headers"]["x-unitgate-class"], "P");
    let (_, _, write) = send(
        &client,
        request("PUT", topo.region("sz").http, "/item/1", &[]),
    )
    .await;
    assert_eq!(write["region"], "hz");
    assert_eq!(write["unit"], "u01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_that_disagree_stop_at_508() {
    // Each gateway believes u03 lives in the next region: hz -> sh -> sz -> hz.
    let topo = Topology::start_with(|region, t| {
        let to = match region {
            "hz" => "sh",
            "sh" => "sz",
            _ => "hz",
        };
        let version = match region {
            "hz" => "version: 11",
            "sh" => "version: 12",
            _ => "version: 13",
        };
        t.replace("version: 1\n", &format!("{version}\n")).replace(
            "slots: [[3334, 4999]]\n    region: sh\n    standby: sz",
            &format!("slots: [[3334, 4999]]\n    region: {to}"),
        )
    })
    .await;
    let (status, _, body) = send(
        &client(),
        request(
            "GET",
            topo.region("hz").http,
            "/cart",
            &[("x-user-id", "4321")],
        ),
    )
    .await;
    assert_eq!(status, 508, "{body}");
    assert_eq!(body["origin_region"], "hz");
    assert_eq!(body["incoming_table_version"], 12);
    assert_eq!(body["local_table_version"], 13);
    assert_eq!(body["local_region"], "sz");
    assert_eq!(body["hops"], 2);
    for node in &topo.regions {
        assert_eq!(
            node.upstreams["cart"].count(),
            0,
            "{} upstream reached",
            node.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_limits_one_unit_only() {
    // u01 (slots 0-1666) may take 5 requests/s with a burst of 5.
    let topo = Topology::start_with(|_, t| {
        t.replace(
            "    center: true        # hosts the data that cannot be split by user\n",
            "    center: true\n    limits: { rate: 5, burst: 5 }\n",
        )
    })
    .await;
    let client = client();
    let hz = topo.region("hz").http;
    let mut ok = 0u64;
    let mut limited = 0;
    let started = std::time::Instant::now();
    for i in 0..40 {
        let user = format!("{}", i % 1000);
        let (status, headers, body) = send(
            &client,
            request("GET", hz, "/cart", &[("x-user-id", &user)]),
        )
        .await;
        match status.as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(headers["retry-after"], "1");
                assert_eq!(body["scope"], "unit");
                assert_eq!(body["name"], "u01");
                assert_eq!(body["limit"], "rate");
            }
            other => panic!("unexpected {other}: {body}"),
        }
        // Another unit on the same gateway is never limited.
        let (status, _, _) = send(
            &client,
            request("GET", hz, "/cart", &[("x-user-id", "2000")]),
        )
        .await;
        assert_eq!(status, 200);
    }
    // The burst, plus what the rate refilled while the loop ran: no more, however slow the
    // machine.
    let refilled = (started.elapsed().as_secs_f64() * 5.0).ceil() as u64;
    assert!(
        ok >= 5 && ok <= 5 + refilled,
        "admitted {ok} in {:?}",
        started.elapsed()
    );
    assert_eq!(ok + limited, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tables_are_refused_and_the_old_one_keeps_serving() {
    let topo = Topology::start().await;
    let gateway = topo.gateway("hz");
    let broken = topo
        .base_table
        .replace("version: 1", "version: 2")
        .replace("[[1667, 3333]]", "[[1700, 3333]]");
    let refusal = gateway
        .store
        .load_text(&broken, false, "test-push")
        .expect_err("gap");
    assert!(
        refusal
            .error
            .contains("gap: slots 1667-1699 belong to no unit"),
        "{}",
        refusal.error
    );
    let older = topo.base_table.clone();
    let refusal = gateway
        .store
        .load_text(
            &older.replace("version: 1", "version: 0"),
            false,
            "test-push",
        )
        .expect_err("old");
    assert!(refusal.error.contains("version"), "{}", refusal.error);
    let (status, _, body) = send(
        &client(),
        request(
            "GET",
            topo.region("hz").http,
            "/cart",
            &[("x-user-id", "5")],
        ),
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["table_version"].as_u64()),
        (200, Some(1))
    );
    let table = get_json(&client(), topo.region("hz").admin, "/table").await;
    assert_eq!(table["version"], 1);
    assert!(
        table["last_rejected"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("version")),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_from_the_cache_when_the_source_is_gone() {
    let mut topo = Topology::start().await;
    let node = topo
        .regions
        .iter_mut()
        .find(|r| r.name == "sh")
        .expect("sh");
    let flipped = std::fs::read_to_string(&node.table_path)
        .expect("table")
        .replace("version: 1", "version: 2");
    std::fs::write(&node.table_path, flipped).expect("write");
    let gateway = node.gateway.take().expect("running");
    let mut applied = gateway.store.applied_versions();
    gateway.reload();
    applied.wait_for(|v| *v == 2).await.expect("reloaded");
    gateway.shutdown(std::time::Duration::from_secs(1)).await;
    std::fs::remove_file(&node.table_path).expect("source gone");
    let config = gateway_config("sh", &node.table_path, &node.cache_dir);
    let listeners = loopback_listeners();
    let restarted = gateway::Gateway::start(config, listeners)
        .await
        .expect("starts from cache");
    let (status, _, body) = send(
        &client(),
        request(
            "GET",
            restarted.http_addrs[0],
            "/cart",
            &[("x-user-id", "4000")],
        ),
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["table_version"].as_u64()),
        (200, Some(2))
    );
    let table = get_json(&client(), restarted.admin_addr, "/table").await;
    assert!(
        table["origin"]
            .as_str()
            .is_some_and(|o| o.starts_with("cache:")),
        "{table}"
    );

    // No source and no cache: refuse to start, saying why.
    let empty = topo.dir.path().join("empty-cache");
    let config = gateway_config("sh", &node.table_path, &empty);
    let listeners = loopback_listeners();
    let error = gateway::Gateway::start(config, listeners)
        .await
        .err()
        .expect("refuses");
    assert!(error.starts_with("no routing table to serve:"), "{error}");
    assert!(error.contains("cannot read"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p_class_reads_fall_back_when_the_local_pool_is_down() {
    // hz's item pool points at a port nothing listens on.
    let (_reserved, dead) = refusing_address();
    let topo = Topology::start_with(|region, t| {
        if region != "hz" {
            return t;
        }
        let start = t.find("item:  [\"").expect("hz item pool") + "item:  [\"".len();
        let end = start + t[start..].find('"').expect("end");
        format!("{}{dead}{}", &t[..start], &t[end..])
    })
    .await;
    let client = client();
    let hz = topo.region("hz").http;
    // Three failed exchanges eject the endpoint (the default eject_after_failures).
    for _ in 0..3 {
        let (status, _, _) = send(&client, request("GET", hz, "/item/1", &[])).await;
        assert_eq!(status, 502);
    }
    // With no healthy endpoint left, reads go to hz's read_fallback, sh.
    let (status, _, body) = send(&client, request("GET", hz, "/item/1", &[])).await;
    assert_eq!(
        (status.as_u16(), body["region"].as_str()),
        (200, Some("sh")),
        "{body}"
    );
    assert_eq!(topo.region("sh").upstreams["item"].count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_behind_serves_what_a_newer_table_sent_it_instead_of_bouncing_it() {
    // Mid-flip: hz already has version 2 (u03 moved to sz); sz still has version 1 (u03 in sh).
    let topo = Topology::start_with(|region, t| match region {
        "hz" => t.replace("version: 1\n", "version: 2\n").replace(
            "slots: [[3334, 4999]]\n    region: sh\n    standby: sz",
            "slots: [[3334, 4999]]\n    region: sz\n    standby: sh",
        ),
        _ => t,
    })
    .await;
    let (status, _, body) = send(
        &client(),
        request(
            "GET",
            topo.region("hz").http,
            "/cart",
            &[("x-user-id", "4321")],
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["region"], "sz", "served where the newer table put it");
    assert_eq!(
        topo.region("sh").upstreams["cart"].count(),
        0,
        "not bounced on to sh"
    );
}
