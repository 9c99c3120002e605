//! Flips with real gateways following a real control plane: every step reaches every gateway
//! in order; a failed replication check rolls everything back; an emergency flip is one
//! version; one flip per unit; concurrent table writes; gateways ride out a control-plane
//! outage.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use control_api::{AuditEntry, AuditOutcome, Client, FlipState, StepName, StepOutcome};
use gateway::Gateway;
use http::StatusCode;
use support::{
    ControlProcess, Tokens, applied, audit_after_end, file_plane_config, flip_request, gateway,
    unit_placement, wait_flip,
};

struct Setup {
    dir: tempfile::TempDir,
    tokens: Tokens,
    cp: ControlProcess,
    gateways: Vec<Gateway>,
}

async fn setup(gateways: usize) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let config = file_plane_config(dir.path(), &tokens);
    let cp = ControlProcess::start(&config);
    let mut started = Vec::new();
    for (i, region) in ["hz", "sh", "sz"].iter().cycle().take(gateways).enumerate() {
        let cache = dir.path().join(format!("cache-{i}"));
        started.push(
            gateway(
                region,
                &cp.url,
                tokens.gateway(region),
                &cache,
                &format!("{region}-{i}"),
            )
            .await,
        );
    }
    Setup {
        dir,
        tokens,
        cp,
        gateways: started,
    }
}

async fn start_flip(
    client: &Client,
    unit: &str,
    body: serde_json::Value,
) -> Result<String, control_api::ClientError> {
    Ok(client.start_flip(unit, &flip_request(body)).await?.id)
}

/// Wait until every gateway serves `version`; check `unit`'s (region, state) in it.
async fn all_serve(gateways: &[Gateway], version: u64, unit: &str, placed: (&str, &str)) {
    for g in gateways {
        applied(g, version).await;
        let table = g.store.current().expect("table");
        assert_eq!(
            unit_placement(table.table.raw(), unit),
            (placed.0.to_owned(), placed.1.to_owned())
        );
    }
}

/// Versions a gateway applied, with the unit's (region, state) in each.
type AppliedLog = Arc<Mutex<Vec<(u64, (String, String))>>>;

/// Record every version each gateway applies, with the unit's placement in it.
fn record(gateways: &[Gateway], unit: &'static str) -> Vec<AppliedLog> {
    gateways
        .iter()
        .map(|g| {
            let log = Arc::new(Mutex::new(Vec::new()));
            let mut versions = g.store.applied_versions();
            let store = g.store.clone();
            let sink = log.clone();
            tokio::spawn(async move {
                while versions.changed().await.is_ok() {
                    if let Some(snapshot) = store.current() {
                        let placement = unit_placement(snapshot.table.raw(), unit);
                        sink.lock()
                            .expect("log")
                            .push((snapshot.table.version(), placement));
                    }
                }
            });
            log
        })
        .collect()
}

fn swaps(gateway: &Gateway) -> u64 {
    gateway
        .metrics
        .table_swaps
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planned_flip_reaches_every_gateway_step_by_step() {
    let s = setup(3).await;
    for g in &s.gateways {
        applied(g, 1).await;
    }
    let swaps_before: Vec<u64> = s.gateways.iter().map(swaps).collect();
    let logs = record(&s.gateways, "u03");
    let operator = s.cp.client(&s.tokens.operator);
    let id = start_flip(
        &operator,
        "u03",
        serde_json::json!({"to": "sz", "mode": "planned", "reason": "drill", "replication_check": {"confirm": true}}),
    )
    .await
    .expect("flip accepted");
    // A second flip of the same unit is refused while this one runs.
    let second = start_flip(
        &operator,
        "u03",
        serde_json::json!({"to": "hz", "mode": "emergency", "reason": "again"}),
    )
    .await;
    match second {
        Err(control_api::ClientError::Api { status, error }) => {
            assert_eq!(status, StatusCode::CONFLICT);
            assert!(error.message.contains(&id), "{error:?}");
        }
        other => panic!("second flip: {other:?}"),
    }
    // The flip waits for the confirmation with the unit frozen everywhere.
    all_serve(&s.gateways, 2, "u03", ("sh", "write_frozen")).await;
    operator.confirm_flip(&id).await.expect("confirmed");
    let flip = wait_flip(&operator, &id).await;
    assert_eq!(flip.state, FlipState::Succeeded, "{flip:?}");
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
            StepName::ConvergeUnfreeze
        ]
    );
    assert!(flip.steps.iter().all(|s| s.outcome == StepOutcome::Ok));
    for step in flip.steps.iter().filter(|s| {
        matches!(
            s.name,
            StepName::ConvergeFreeze | StepName::ConvergeSwitch | StepName::ConvergeUnfreeze
        )
    }) {
        assert_eq!(
            step.detail.as_deref(),
            Some(&*format!(
                "3 live gateway(s) serve version {}",
                step.version.expect("version")
            ))
        );
    }
    // Every gateway applied every version exactly once, in order: freeze, switch, unfreeze.
    let expected = [
        (2, ("sh".to_owned(), "write_frozen".to_owned())),
        (3, ("sz".to_owned(), "write_frozen".to_owned())),
        (4, ("sz".to_owned(), "active".to_owned())),
    ];
    for (i, g) in s.gateways.iter().enumerate() {
        applied(g, 4).await;
        assert_eq!(
            swaps(g) - swaps_before[i],
            3,
            "gateway {i} applied each version once"
        );
        let log = logs[i].lock().expect("log").clone();
        assert!(
            log.windows(2).all(|w| w[0].0 < w[1].0) && log.iter().all(|e| expected.contains(e)),
            "gateway {i}: {log:?}"
        );
    }
    // Freeze applied everywhere before the switch was stored, the switch before the unfreeze.
    let steps = |name| flip.steps.iter().find(|s| s.name == name).expect("step");
    assert!(
        steps(StepName::ConvergeFreeze).finished_at_ms
            <= Some(steps(StepName::Switch).started_at_ms)
    );
    assert!(
        steps(StepName::ConvergeSwitch).finished_at_ms
            <= Some(steps(StepName::Unfreeze).started_at_ms)
    );
    // The standby swapped with the region left behind.
    let table = operator.table().await.expect("table");
    let unit = table
        .table
        .units
        .iter()
        .find(|u| u.name == "u03")
        .expect("u03");
    assert_eq!(unit.standby.as_deref(), Some("sh"));
    // The audit log has the start, every step and the end.
    let audit = audit_after_end(&operator, &id).await;
    let of_flip: Vec<&AuditEntry> = audit
        .iter()
        .filter(|e| e.flip.as_deref() == Some(&id))
        .collect();
    assert_eq!(
        of_flip.first().map(|e| e.action.as_str()),
        Some("flip.start")
    );
    assert_eq!(of_flip.last().map(|e| e.action.as_str()), Some("flip.end"));
    assert_eq!(
        of_flip.iter().filter(|e| e.action == "flip.step").count(),
        7
    );
    assert!(
        audit
            .iter()
            .any(|e| e.action == "flip.confirm" && e.outcome == AuditOutcome::Ok)
    );
    // And the gateways are listed, current.
    let gateways = operator.gateways().await.expect("gateways");
    assert_eq!(gateways.len(), 3);
    assert!(
        gateways.iter().all(|g| g.applied_version == 4 && !g.stale),
        "{gateways:?}"
    );
}

/// An HTTP probe that always says the replica is behind.
async fn lagging_probe() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(|_request| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"{\"lag\": 12}"),
                )))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_replication_check_rolls_everything_back() {
    let s = setup(3).await;
    let probe = lagging_probe().await;
    let operator = s.cp.client(&s.tokens.operator);
    let id = start_flip(
        &operator,
        "u01",
        serde_json::json!({
            "to": "sh", "mode": "planned", "reason": "drill",
            "replication_check": {"url": format!("http://{probe}/lag"), "timeout_s": 1}
        }),
    )
    .await
    .expect("flip accepted");
    let flip = wait_flip(&operator, &id).await;
    assert_eq!(flip.state, FlipState::RolledBack, "{flip:?}");
    let error = flip.error.clone().unwrap_or_default();
    assert!(
        error.contains("did not say lag 0") && error.contains("\"lag\": 12"),
        "{error}"
    );
    let names: Vec<StepName> = flip.steps.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            StepName::Freeze,
            StepName::ConvergeFreeze,
            StepName::Replication,
            StepName::Rollback,
            StepName::ConvergeRollback
        ]
    );
    // Back where it was, in a new version, at every gateway.
    let pre = operator.table_version(1).await.expect("v1");
    let now = operator.table().await.expect("current");
    assert_eq!(now.version, 3);
    let mut renumbered = now.table.clone();
    renumbered.version = pre.table.version;
    assert_eq!(
        renumbered, pre.table,
        "the rollback version equals the pre-flip version"
    );
    all_serve(&s.gateways, 3, "u01", ("hz", "active")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emergency_flip_is_one_version_and_a_cancel_rolls_back() {
    let s = setup(3).await;
    for g in &s.gateways {
        applied(g, 1).await;
    }
    let operator = s.cp.client(&s.tokens.operator);
    let id = start_flip(
        &operator,
        "u05",
        serde_json::json!({"to": "hz", "mode": "emergency", "reason": "sz is down"}),
    )
    .await
    .expect("flip accepted");
    let flip = wait_flip(&operator, &id).await;
    assert_eq!(flip.state, FlipState::Succeeded, "{flip:?}");
    assert_eq!(
        flip.steps.iter().map(|s| s.name).collect::<Vec<_>>(),
        [StepName::EmergencySwitch, StepName::ConvergeEmergency]
    );
    let table = operator.table().await.expect("table");
    assert_eq!(table.version, 2, "one version");
    all_serve(&s.gateways, 2, "u05", ("hz", "active")).await;
    let audit = audit_after_end(&operator, &id).await;
    let end = audit
        .iter()
        .find(|e| e.action == "flip.end" && e.flip.as_deref() == Some(&id))
        .expect("end");
    assert!(
        end.detail
            .as_deref()
            .unwrap_or_default()
            .contains("may be lost"),
        "{end:?}"
    );

    // A planned flip waiting for confirmation, cancelled: rolled back.
    let id = start_flip(
        &operator,
        "u06",
        serde_json::json!({"to": "hz", "mode": "planned", "reason": "drill", "replication_check": {"confirm": true}}),
    )
    .await
    .expect("flip accepted");
    for g in &s.gateways {
        applied(g, 3).await;
    }
    operator.cancel_flip(&id).await.expect("cancelled");
    let flip = wait_flip(&operator, &id).await;
    assert_eq!(flip.state, FlipState::RolledBack, "{flip:?}");
    assert!(
        flip.error
            .as_deref()
            .unwrap_or_default()
            .contains("cancelled"),
        "{flip:?}"
    );
    all_serve(&s.gateways, 4, "u06", ("sz", "active")).await;
    // An ended flip takes no more signals.
    let refused = operator.cancel_flip(&id).await.expect_err("flip ended");
    assert_eq!(refused.status(), Some(StatusCode::CONFLICT), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_with_one_if_match_have_one_winner_on_the_file_store() {
    let s = setup(0).await;
    support::race_table_writes(&s.cp, &s.tokens).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gateways_keep_serving_through_a_control_plane_outage_and_converge_after() {
    let mut s = setup(3).await;
    for g in &s.gateways {
        applied(g, 1).await;
    }
    s.cp.kill9();
    // A gateway restarted while the control plane is down starts from its cache.
    let cache = s.dir.path().join("cache-0");
    let restarted = gateway("hz", &s.cp.url, s.tokens.gateway("hz"), &cache, "hz-0").await;
    assert_eq!(
        restarted
            .store
            .current()
            .expect("cached table")
            .table
            .version(),
        1
    );
    assert!(
        restarted
            .store
            .current()
            .expect("table")
            .origin
            .starts_with("cache:")
    );
    let old = std::mem::replace(&mut s.gateways[0], restarted);
    old.shutdown(Duration::from_millis(100)).await;
    // The control plane comes back on the same address; a new version reaches everyone.
    let config = s.cp.config.clone();
    let addr = s.cp.addr;
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("listen: 127.0.0.1:0", &format!("listen: {addr}"));
    std::fs::write(&config, text).expect("write");
    s.cp = ControlProcess::start(&config);
    let operator = s.cp.client(&s.tokens.operator);
    let id = start_flip(
        &operator,
        "u02",
        serde_json::json!({"to": "sh", "mode": "emergency", "reason": "after the outage"}),
    )
    .await
    .expect("flip");
    let flip = wait_flip(&operator, &id).await;
    assert_eq!(flip.state, FlipState::Succeeded);
    for g in &s.gateways {
        applied(g, 2).await;
    }
    // Each gateway tells the control plane on its next poll, right after applying.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let gateways = operator.gateways().await.expect("gateways");
        if gateways.len() == 3 && gateways.iter().all(|g| g.applied_version == 2 && !g.stale) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{gateways:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTPS replication monitor with the certificate of `cert`: `{"lag": 0}` to a request that
/// carries `authorization: Bearer probe-secret`, `401` to any other; counts the authorised ones.
async fn monitor_over_tls(
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> (std::net::SocketAddr, Arc<Mutex<u32>>) {
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let authorised = Arc::new(Mutex::new(0));
    let counted = authorised.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, counted) = (acceptor.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    let allowed = request
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .is_some_and(|v| v == "Bearer probe-secret");
                    if allowed {
                        *counted.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    }
                    let (status, body) = if allowed {
                        (StatusCode::OK, &b"{\"lag\": 0}"[..])
                    } else {
                        (StatusCode::UNAUTHORIZED, &b"no token"[..])
                    };
                    async move {
                        let mut response = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(body),
                        ));
                        *response.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, authorised)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replication_probe_over_https_carries_the_configured_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let ca = dir.path().join("monitor-ca.pem");
    std::fs::write(&ca, cert.cert.pem()).expect("ca");
    let (monitor, authorised) = monitor_over_tls(&cert).await;
    let url = format!("https://localhost:{}/lag", monitor.port());
    let tokens = Tokens::new();
    // Without the header the monitor refuses: the flip rolls back, naming the answer.
    let config = support::write_config_with(
        dir.path(),
        "bare",
        "127.0.0.1:0",
        &support::file_store(&dir.path().join("bare")),
        &tokens,
        &format!("replication_probe: {{ ca_file: {} }}\n", ca.display()),
    );
    let cp = ControlProcess::start(&config);
    let operator = cp.client(&tokens.operator);
    let body = serde_json::json!({
        "to": "sh", "mode": "planned", "reason": "drill",
        "replication_check": {"url": url, "timeout_s": 1}
    });
    let id = start_flip(&operator, "u01", body.clone())
        .await
        .expect("flip accepted");
    let flip = wait_flip(&operator, &id).await;
    assert_eq!(flip.state, FlipState::RolledBack, "{flip:?}");
    let error = flip.error.unwrap_or_default();
    assert!(
        error.contains("401") && error.contains("no token"),
        "{error}"
    );
    drop(cp);
    // With the configured header, over TLS verified against the monitor's CA, it goes through.
    let config = support::write_config_with(
        dir.path(),
        "probing",
        "127.0.0.1:0",
        &support::file_store(&dir.path().join("probing")),
        &tokens,
        &format!(
            "replication_probe: {{ ca_file: {}, headers: {{ authorization: \"Bearer probe-secret\" }} }}\n",
            ca.display()
        ),
    );
    let cp = ControlProcess::start(&config);
    let operator = cp.client(&tokens.operator);
    let id = start_flip(&operator, "u01", body)
        .await
        .expect("flip accepted");
    let flip = wait_flip(&operator, &id).await;
    assert_eq!(flip.state, FlipState::Succeeded, "{flip:?}");
    let replication = flip
        .steps
        .iter()
        .find(|s| s.name == StepName::Replication)
        .expect("replication step");
    assert!(
        replication
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("lag 0")),
        "{replication:?}"
    );
    assert!(*authorised.lock().unwrap_or_else(|e| e.into_inner()) >= 1);
}

/// Each gateway's table, by version, with the placement of `units` in it.
async fn all_serve_placed(gateways: &[Gateway], version: u64, placed: &[(&str, (&str, &str))]) {
    for g in gateways {
        applied(g, version).await;
        let table = g.store.current().expect("table");
        for (unit, (region, state)) in placed {
            assert_eq!(
                unit_placement(table.table.raw(), unit),
                ((*region).to_owned(), (*state).to_owned()),
                "{unit} at a gateway"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planned_evacuation_is_three_versions_for_all_its_units_and_a_restore_undoes_it() {
    let s = setup(3).await;
    let operator = s.cp.client(&s.tokens.operator);
    // sz holds u05 and u06, both with standby hz.
    let evacuation = operator
        .evacuate(
            "sz",
            &serde_json::from_value(serde_json::json!({
                "mode": "planned", "reason": "sz maintenance"
            }))
            .expect("request"),
        )
        .await
        .expect("evacuation accepted");
    let flip = wait_flip(&operator, &evacuation.id).await;
    assert_eq!(flip.state, FlipState::Succeeded, "{flip:?}");
    assert_eq!(flip.operation.as_deref(), Some("evacuate:sz"));
    let moved: Vec<(&str, &str, &str)> = flip
        .units
        .iter()
        .map(|u| (u.unit.as_str(), u.from.as_str(), u.to.as_str()))
        .collect();
    assert_eq!(moved, [("u05", "sz", "hz"), ("u06", "sz", "hz")]);
    // One version per step for both units: freeze (2), switch (3), unfreeze (4).
    for (version, placed) in [
        (2, ("sz", "write_frozen")),
        (3, ("hz", "write_frozen")),
        (4, ("hz", "active")),
    ] {
        let stored = operator.table_version(version).await.expect("version");
        for unit in ["u05", "u06"] {
            assert_eq!(
                unit_placement(&stored.table, unit),
                (placed.0.to_owned(), placed.1.to_owned()),
                "{unit} in version {version}"
            );
        }
    }
    assert_eq!(operator.table().await.expect("table").version, 4);
    all_serve_placed(
        &s.gateways,
        4,
        &[("u05", ("hz", "active")), ("u06", ("hz", "active"))],
    )
    .await;

    // Restore: back to sz, planned, three more versions.
    let restore = operator
        .restore(
            "sz",
            &serde_json::from_value(serde_json::json!({ "reason": "sz is back" }))
                .expect("request"),
        )
        .await
        .expect("restore accepted");
    let flip = wait_flip(&operator, &restore.id).await;
    assert_eq!(flip.state, FlipState::Succeeded, "{flip:?}");
    assert_eq!(flip.operation.as_deref(), Some("restore:sz"));
    all_serve_placed(
        &s.gateways,
        7,
        &[("u05", ("sz", "active")), ("u06", ("sz", "active"))],
    )
    .await;
    // Nothing left to restore; nothing lives in an empty region's evacuation.
    let again = operator
        .restore(
            "sz",
            &serde_json::from_value(serde_json::json!({ "reason": "twice" })).expect("request"),
        )
        .await
        .expect_err("nothing to restore");
    assert_eq!(again.status(), Some(StatusCode::CONFLICT), "{again}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_failed_check_rolls_every_unit_back_and_overlapping_operations_are_refused() {
    let s = setup(3).await;
    let probe = lagging_probe().await;
    let operator = s.cp.client(&s.tokens.operator);
    let many = operator
        .start_flips(
            &serde_json::from_value(serde_json::json!({
                "units": ["u03", "u04"], "to": "sz", "mode": "planned", "reason": "drill",
                "replication_check": {"url": format!("http://{probe}/lag"), "timeout_s": 2}
            }))
            .expect("request"),
        )
        .await
        .expect("accepted");
    // While it waits for replication, no other operation may touch its units.
    let frozen = support::flip_until(&operator, &many.id, "frozen", |f| {
        f.steps
            .iter()
            .any(|step| step.name == StepName::Replication)
    })
    .await;
    assert_eq!(frozen.unit, "u03,u04");
    let overlapping = start_flip(
        &operator,
        "u04",
        serde_json::json!({"to": "hz", "mode": "emergency", "reason": "other"}),
    )
    .await
    .expect_err("u04 is taken");
    assert_eq!(overlapping.status(), Some(StatusCode::CONFLICT));
    assert!(overlapping.to_string().contains(&many.id), "{overlapping}");
    let evacuation = operator
        .evacuate(
            "sh",
            &serde_json::from_value(serde_json::json!({"mode": "emergency", "reason": "other"}))
                .expect("request"),
        )
        .await
        .expect_err("sh's units are taken");
    assert_eq!(evacuation.status(), Some(StatusCode::CONFLICT));
    // The check fails: both units go back together, in one version.
    let flip = wait_flip(&operator, &many.id).await;
    assert_eq!(flip.state, FlipState::RolledBack, "{flip:?}");
    let names: Vec<StepName> = flip.steps.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            StepName::Freeze,
            StepName::ConvergeFreeze,
            StepName::Replication,
            StepName::Rollback,
            StepName::ConvergeRollback
        ]
    );
    all_serve_placed(
        &s.gateways,
        3,
        &[("u03", ("sh", "active")), ("u04", ("sh", "active"))],
    )
    .await;
    // Its locks are free again: an emergency evacuation of sh moves both in one version.
    let evacuation = operator
        .evacuate(
            "sh",
            &serde_json::from_value(serde_json::json!({"mode": "emergency", "reason": "sh down"}))
                .expect("request"),
        )
        .await
        .expect("evacuation accepted");
    let flip = wait_flip(&operator, &evacuation.id).await;
    assert_eq!(flip.state, FlipState::Succeeded, "{flip:?}");
    all_serve_placed(
        &s.gateways,
        4,
        &[("u03", ("sz", "active")), ("u04", ("sz", "active"))],
    )
    .await;
}

/// A replication monitor that says `lag 0` for the units in `caught_up` and `{"lag": 9}` for
/// any other, by the last path segment (`/lag/u03`).
async fn monitor_by_unit(caught_up: &'static [&'static str]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(move |request: http::Request<_>| {
                let unit = request.uri().path().rsplit('/').next().unwrap_or_default();
                let body: &'static [u8] = if caught_up.contains(&unit) {
                    b"lag 0"
                } else {
                    b"{\"lag\": 9}"
                };
                async move {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(body)),
                    ))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flip_of_several_units_probes_each_units_replication() {
    let s = setup(0).await;
    let operator = s.cp.client(&s.tokens.operator);
    let flip_both = |probe: std::net::SocketAddr| {
        serde_json::from_value::<control_api::MultiFlipRequest>(serde_json::json!({
            "units": ["u03", "u04"], "to": "sz", "mode": "planned", "reason": "drill",
            "replication_check": {"url": format!("http://{probe}/lag/{{unit}}"), "timeout_s": 1}
        }))
        .expect("request")
    };
    // u04's data is behind: the whole operation rolls back, naming u04's probe.
    let behind = monitor_by_unit(&["u03"]).await;
    let id = operator
        .start_flips(&flip_both(behind))
        .await
        .expect("accepted")
        .id;
    let flip = wait_flip(&operator, &id).await;
    assert_eq!(flip.state, FlipState::RolledBack, "{flip:?}");
    let error = flip.error.unwrap_or_default();
    assert!(
        error.contains("/lag/u04") && !error.contains("/lag/u03"),
        "{error}"
    );
    // Both caught up: it goes through, each unit's probe asked.
    let caught_up = monitor_by_unit(&["u03", "u04"]).await;
    let id = operator
        .start_flips(&flip_both(caught_up))
        .await
        .expect("accepted")
        .id;
    let flip = wait_flip(&operator, &id).await;
    assert_eq!(flip.state, FlipState::Succeeded, "{flip:?}");
    let replication = flip
        .steps
        .iter()
        .find(|step| step.name == StepName::Replication)
        .and_then(|step| step.detail.clone())
        .unwrap_or_default();
    assert!(
        replication.contains("/lag/u03") && replication.contains("/lag/u04"),
        "{replication}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmation_wait_says_its_deadline_and_an_operator_extends_it() {
    let s = setup(0).await;
    let operator = s.cp.client(&s.tokens.operator);
    let id = start_flip(
        &operator,
        "u03",
        serde_json::json!({
            "to": "sz", "mode": "planned", "reason": "drill",
            "replication_check": {"confirm": true, "timeout_s": 600}
        }),
    )
    .await
    .expect("accepted");
    let waiting =
        support::flip_until(&operator, &id, "a deadline", |f| f.confirm_by_ms.is_some()).await;
    let deadline = waiting.confirm_by_ms.expect("deadline");
    assert!(deadline > control_api::now_ms() + 500_000, "{waiting:?}");
    operator.extend_flip(&id, 300).await.expect("extended");
    support::flip_until(&operator, &id, "the deadline moved", |f| {
        f.confirm_by_ms == Some(deadline + 300_000)
    })
    .await;
    // The audit log says by how much.
    let audit = operator.audit(None).await.expect("audit");
    let extended = audit
        .iter()
        .find(|e| e.action == "flip.extend")
        .expect("an audit entry");
    assert_eq!(
        extended.detail.as_deref(),
        Some("300 s added"),
        "{extended:?}"
    );
    let refused = operator.extend_flip(&id, 0).await.expect_err("0 s");
    assert_eq!(refused.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    operator.confirm_flip(&id).await.expect("confirmed");
    let flip = wait_flip(&operator, &id).await;
    assert_eq!(flip.state, FlipState::Succeeded, "{flip:?}");
    assert_eq!(flip.confirm_by_ms, None);
    // A flip that waits for no confirmation has nothing to extend; an ended one neither.
    let refused = operator.extend_flip(&id, 60).await.expect_err("ended");
    assert_eq!(refused.status(), Some(StatusCode::CONFLICT));
}

/// A flip may ask for the longest waits the API takes (`u64::MAX` seconds to converge and to
/// be confirmed, extended on top): they are waits without end in practice, not deadlines past
/// what the clock can hold, which would panic the task running the flip and leave it stuck.
#[tokio::test(flavor = "multi_thread")]
async fn the_longest_waits_the_api_takes_are_waited_for() {
    let s = setup(1).await;
    applied(&s.gateways[0], 1).await;
    let operator = s.cp.client(&s.tokens.operator);
    let id = start_flip(
        &operator,
        "u03",
        serde_json::json!({
            "to": "sz", "mode": "planned", "reason": "drill", "converge_timeout_s": u64::MAX,
            "replication_check": {"confirm": true, "timeout_s": u64::MAX}
        }),
    )
    .await
    .expect("accepted");
    let waiting =
        support::flip_until(&operator, &id, "a deadline", |f| f.confirm_by_ms.is_some()).await;
    assert_eq!(waiting.confirm_by_ms, Some(u64::MAX), "{waiting:?}");
    operator.extend_flip(&id, 86_400).await.expect("extended");
    operator.confirm_flip(&id).await.expect("confirmed");
    let flip = wait_flip(&operator, &id).await;
    assert_eq!(flip.state, FlipState::Succeeded, "{flip:?}");
    all_serve(&s.gateways, 4, "u03", ("sz", "active")).await;
}
