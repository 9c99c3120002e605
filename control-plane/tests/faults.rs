//! A flip keeps its promise under faults: a version number names one content, a gateway
//! token speaks only for its own gateways, one unreadable flip record stops nothing else, and
//! units move only by flips unless an admin forces it.

mod support;

use std::time::Duration;

use control_api::{
    ApiError, AuditEntry, AuditOutcome, Client, FlipRecord, FlipState, GatewayReport,
    GatewayStatus, ResolveResult, Status, StepName, StepOutcome, StoredTable,
};
use http::{Method, StatusCode};
use support::{
    ControlProcess, Tokens, applied, file_plane_config, file_store, flip_until, gateway,
    unit_placement, write_config,
};

const T: Duration = Duration::from_secs(10);

fn report_body(gateway: &str, region: &str, applied: u64, digest: Option<&str>) -> bytes::Bytes {
    serde_json::to_vec(&GatewayReport {
        gateway: gateway.into(),
        region: region.into(),
        applied,
        digest: digest.map(str::to_owned),
        rejected: None,
    })
    .expect("json")
    .into()
}

async fn post_report(
    client: &Client,
    gateway: &str,
    region: &str,
    applied: u64,
    digest: Option<&str>,
) -> control_api::Reply {
    client
        .send(
            Method::POST,
            "/v1/report",
            &[],
            Some((
                report_body(gateway, region, applied, digest),
                "application/json",
            )),
            T,
        )
        .await
        .expect("report answered")
}

async fn audit(client: &Client) -> Vec<AuditEntry> {
    client.get_json("/v1/audit", T).await.expect("audit")
}

async fn gateways(client: &Client) -> Vec<GatewayStatus> {
    client.get_json("/v1/gateways", T).await.expect("gateways")
}

fn error_of(reply: &control_api::Reply) -> ApiError {
    serde_json::from_slice(&reply.body).expect("a JSON error")
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_gateway_reports_are_refused_audited_and_never_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let cp = ControlProcess::start(&file_plane_config(dir.path(), &tokens));
    let hz = cp.client(tokens.gateway("hz"));
    let viewer = cp.client(&tokens.viewer);

    // The hz token speaks for hz-* in hz only.
    assert_eq!(
        post_report(&hz, "hz-1", "hz", 1, None).await.status,
        StatusCode::NO_CONTENT
    );
    for (id, region) in [
        ("hz-2", "sh"),
        ("sh-1", "sh"),
        ("sh-1", "hz"),
        ("x", "nowhere"),
    ] {
        let reply = post_report(&hz, id, region, 1, None).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{id} in {region}");
        assert_eq!(error_of(&reply).error, "gateway_not_allowed");
    }
    let watch = hz
        .send(
            Method::GET,
            "/v1/watch?after=0&gateway=sz-9&region=sz&timeout_s=0",
            &[],
            None,
            T,
        )
        .await
        .expect("watch answered");
    assert_eq!(watch.status, StatusCode::FORBIDDEN);
    // A version never stored is refused too.
    let reply = post_report(&hz, "hz-1", "hz", 999_999, None).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        error_of(&reply).message.contains("never stored"),
        "{:?}",
        error_of(&reply)
    );
    let watch = hz
        .send(
            Method::GET,
            "/v1/watch?after=999999&applied=999999&gateway=hz-3&region=hz&timeout_s=0",
            &[],
            None,
            T,
        )
        .await
        .expect("watch answered");
    assert_eq!(watch.status, StatusCode::UNPROCESSABLE_ENTITY);

    // Only the honest report counts: one gateway, at version 1.
    let fleet = gateways(&viewer).await;
    assert_eq!(
        fleet
            .iter()
            .map(|g| (g.id.as_str(), g.applied_version))
            .collect::<Vec<_>>(),
        vec![("hz-1", 1)],
        "{fleet:?}"
    );
    let refused: Vec<AuditEntry> = audit(&viewer)
        .await
        .into_iter()
        .filter(|e| e.action.starts_with("gateway.") && e.outcome == AuditOutcome::Refused)
        .collect();
    assert_eq!(refused.len(), 7, "{refused:?}");
    assert!(refused.iter().all(|e| e.actor == "gw-hz"), "{refused:?}");
    assert_eq!(
        refused.iter().filter(|e| e.status == Some(403)).count(),
        5,
        "{refused:?}"
    );
    let metrics = viewer
        .send(Method::GET, "/metrics", &[], None, T)
        .await
        .expect("metrics");
    assert!(
        String::from_utf8_lossy(&metrics.body)
            .contains("unitgate_control_gateway_reports_refused_total 7"),
        "{}",
        String::from_utf8_lossy(&metrics.body)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_diverged_gateway_is_marked_and_sent_the_stored_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let cp = ControlProcess::start(&file_plane_config(dir.path(), &tokens));
    let hz = cp.client(tokens.gateway("hz"));
    let viewer = cp.client(&tokens.viewer);
    let stored: StoredTable = viewer.get_json("/v1/table", T).await.expect("table");
    assert_eq!(stored.digest, control_api::table_digest(&stored.table));
    let forged = format!("sha256:{}", "0".repeat(64));

    // Serving version 1 with other content: listed as diverged, counted in the metrics.
    let reply = post_report(&hz, "hz-1", "hz", 1, Some(&forged)).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let fleet = gateways(&viewer).await;
    assert!(fleet[0].diverged, "{fleet:?}");
    let metrics = viewer
        .send(Method::GET, "/metrics", &[], None, T)
        .await
        .expect("metrics");
    assert!(
        String::from_utf8_lossy(&metrics.body)
            .contains("unitgate_control_gateways{state=\"diverged\"} 1")
    );
    // Its watch is answered at once with the stored version 1, although it asks for newer.
    let watch = hz
        .send(
            Method::GET,
            &format!("/v1/watch?after=1&applied=1&digest={forged}&gateway=hz-1&region=hz"),
            &[],
            None,
            T,
        )
        .await
        .expect("watch");
    assert_eq!(watch.status, StatusCode::OK);
    assert_eq!(
        watch
            .headers
            .get(control_api::DIGEST_HEADER)
            .map(|v| v.as_bytes()),
        Some(stored.digest.as_bytes())
    );
    let table: router_rules::RawTable = serde_json::from_slice(&watch.body).expect("table");
    assert_eq!(table, stored.table);
    // Reporting the stored digest heals it.
    post_report(&hz, "hz-1", "hz", 1, Some(&stored.digest)).await;
    assert!(!gateways(&viewer).await[0].diverged);
}

/// A gateway whose cache was edited by hand, digest and all, serves it while the control
/// plane is away; once the control plane is back, the gateway is told and takes the stored
/// version. A cache edited without its digest is never served.
#[tokio::test(flavor = "multi_thread")]
async fn an_edited_gateway_cache_is_refused_or_healed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let port = testkit::free_port();
    let config = write_config(
        dir.path(),
        "cp",
        &format!("127.0.0.1:{port}"),
        &file_store(dir.path()),
        &tokens,
    );
    let mut cp = ControlProcess::start(&config);
    let cache = dir.path().join("cache");
    let g = gateway("hz", &cp.url, tokens.gateway("hz"), &cache, "hz-0").await;
    applied(&g, 1).await;
    let stored = g.store.current().expect("table").digest.clone();
    g.shutdown(Duration::from_millis(100)).await;
    cp.kill9();

    // Edit the cache: a pinned key for u02, digest recomputed so the cache passes its check.
    let path = cache.join("table.json");
    let mut cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("cache")).expect("json");
    cached["table"]["units"][1]["pinned_keys"] = serde_json::json!(["edited-by-hand"]);
    let edited: router_rules::RawTable =
        serde_json::from_value(cached["table"].clone()).expect("table");
    let edited_digest = control_api::table_digest(&edited);
    assert_ne!(edited_digest, stored);
    cached["digest"] = edited_digest.clone().into();
    std::fs::write(&path, serde_json::to_vec(&cached).expect("json")).expect("write");

    let url = format!("http://127.0.0.1:{port}");
    let g = gateway("hz", &url, tokens.gateway("hz"), &cache, "hz-0").await;
    let serving = g.store.current().expect("table");
    assert_eq!(
        (serving.table.version(), serving.digest.as_str()),
        (1, edited_digest.as_str()),
        "served from the edited cache while the control plane is down"
    );
    drop(serving);
    let cp = ControlProcess::start(&config);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while g.store.current().expect("table").digest != stored {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the diverged gateway was not healed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let healed = g.store.current().expect("table");
    assert_eq!(healed.table.version(), 1);
    assert!(healed.table.raw().units[1].pinned_keys.is_empty());
    drop(healed);
    g.shutdown(Duration::from_millis(100)).await;

    // Edited again, this time without the digest: refused at start.
    let mut cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("cache")).expect("json");
    cached["table"]["units"][1]["pinned_keys"] = serde_json::json!(["edited-again"]);
    std::fs::write(&path, serde_json::to_vec(&cached).expect("json")).expect("write");
    let store = gateway::store::TableStore::new(
        "hz",
        Some(cache.clone()),
        std::sync::Arc::new(gateway::metrics::Metrics::default()),
    );
    let refused = store
        .restore_from_cache(false)
        .expect_err("an edited cache is refused");
    assert!(
        matches!(refused, gateway::store::CacheRefusal::Tampered(_)),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("--accept-cache-as-is"),
        "{refused}"
    );
    assert!(store.current().is_none());
    assert_eq!(
        store.restore_from_cache(true),
        Ok(1),
        "served when asked to"
    );
    // A gateway starting on it while the control plane answers takes the stored table.
    let g = gateway("hz", &cp.url, tokens.gateway("hz"), &cache, "hz-0").await;
    assert_eq!(g.store.current().expect("table").digest, stored);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_missing_a_version_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let config = file_plane_config(dir.path(), &tokens);
    let mut cp = ControlProcess::start(&config);
    let admin = cp.client(&tokens.admin);
    // Two more versions (pinned keys change nothing that moves).
    for n in 0..2 {
        let current: StoredTable = admin.get_json("/v1/table", T).await.expect("table");
        let mut table = current.table.clone();
        table.units[0].pinned_keys = vec![format!("vip-{n}")];
        let reply = admin
            .send(
                Method::PUT,
                "/v1/table",
                &[(
                    http::header::IF_MATCH,
                    http::HeaderValue::from(current.version),
                )],
                Some((
                    serde_json::to_vec(&table).expect("json").into(),
                    "application/json",
                )),
                T,
            )
            .await
            .expect("put");
        assert_eq!(reply.status, StatusCode::OK);
    }
    cp.kill9();
    let tables = dir.path().join("store/tables");
    let newest = tables.join(format!("v{:020}.json", 3));
    let saved = std::fs::read(&newest).expect("version 3");

    // The newest version deleted: the audit log says it was stored.
    std::fs::remove_file(&newest).expect("delete");
    let (code, stderr) = support::run_to_end(&config);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("version 3 is missing") && stderr.contains("backup"),
        "{stderr}"
    );
    // A middle version deleted: a gap.
    std::fs::write(&newest, &saved).expect("restore");
    let middle = tables.join(format!("v{:020}.json", 2));
    let middle_saved = std::fs::read(&middle).expect("version 2");
    std::fs::remove_file(&middle).expect("delete");
    let (code, stderr) = support::run_to_end(&config);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("version 2 is missing"), "{stderr}");
    // A version edited by hand: its digest no longer matches.
    std::fs::write(&middle, &middle_saved).expect("restore");
    let mut edited: serde_json::Value = serde_json::from_slice(&saved).expect("json");
    edited["table"]["units"][0]["pinned_keys"] = serde_json::json!(["sneaked-in"]);
    std::fs::write(&newest, serde_json::to_vec(&edited).expect("json")).expect("write");
    let (code, stderr) = support::run_to_end(&config);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("does not match its digest"), "{stderr}");
    // Put back, it starts and serves version 3 as it was.
    std::fs::write(&newest, &saved).expect("restore");
    let cp = ControlProcess::start(&config);
    let current: StoredTable = cp
        .client(&tokens.viewer)
        .get_json("/v1/table", T)
        .await
        .expect("table");
    assert_eq!(current.version, 3);
    assert_eq!(current.table.units[0].pinned_keys, vec!["vip-1".to_owned()]);
}

async fn flip(client: &Client, unit: &str, body: serde_json::Value) -> control_api::Reply {
    client
        .send(
            Method::POST,
            &format!("/v1/units/{unit}/flip"),
            &[],
            Some((
                serde_json::to_vec(&body).expect("json").into(),
                "application/json",
            )),
            T,
        )
        .await
        .expect("flip answered")
}

fn held_for_confirmation(to: &str) -> serde_json::Value {
    serde_json::json!({"to": to, "mode": "planned", "reason": "drill", "replication_check": {"confirm": true, "timeout_s": 600}})
}

#[tokio::test(flavor = "multi_thread")]
async fn one_corrupt_flip_record_blocks_only_its_unit_until_resolved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let config = file_plane_config(dir.path(), &tokens);
    let mut cp = ControlProcess::start(&config);
    let operator = cp.client(&tokens.operator);
    // Two flips held at their replication step (no gateways: nothing to wait for).
    let mut ids = Vec::new();
    for (unit, to) in [("u03", "sz"), ("u05", "hz")] {
        let reply = flip(&operator, unit, held_for_confirmation(to)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        let accepted: control_api::FlipAccepted = reply.json().expect("accepted");
        flip_until(&operator, &accepted.id, "replication", |f| {
            f.steps.last().is_some_and(|s| {
                s.name == StepName::Replication && s.outcome == StepOutcome::Running
            })
        })
        .await;
        ids.push(accepted.id);
    }
    cp.kill9();
    // u03's record is cut off mid-write (as a bad disk or a hand edit leaves it).
    let record = dir.path().join(format!("store/flips/{}.json", ids[0]));
    let text = std::fs::read(&record).expect("record");
    std::fs::write(&record, &text[..text.len() / 2]).expect("corrupt");

    let cp = ControlProcess::start(&config);
    let operator = cp.client(&tokens.operator);
    // The other flip is recovered (rolled back), and the flips list answers.
    let other = flip_until(&operator, &ids[1], "u05 recovered", |f| f.state.is_final()).await;
    assert_eq!(other.state, FlipState::RolledBack, "{other:?}");
    let flips: Vec<FlipRecord> = operator.get_json("/v1/flips", T).await.expect("flips");
    assert_eq!(
        flips.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
        vec![ids[1].as_str()]
    );
    assert!(
        dir.path()
            .join(format!("store/flips/quarantine/{}.json", ids[0]))
            .exists()
    );
    // u03 stays frozen (its flip froze it) and locked: no new flip.
    let status: Status = operator.get_json("/v1/status", T).await.expect("status");
    let u03 = status.units.iter().find(|u| u.name == "u03").expect("u03");
    assert_eq!(u03.state, "write_frozen");
    assert!(
        u03.locked.as_deref().unwrap_or_default().contains(&ids[0]),
        "{u03:?}"
    );
    let refused = flip(&operator, "u03", held_for_confirmation("sz")).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(error_of(&refused).error, "unit_locked");
    assert!(error_of(&refused).message.contains("flip-resolve"));
    let audit_log = audit(&operator).await;
    assert!(
        audit_log
            .iter()
            .any(|e| e.action == "flip.quarantine" && e.target == "u03"),
        "{audit_log:?}"
    );
    let metrics = operator
        .send(Method::GET, "/metrics", &[], None, T)
        .await
        .expect("metrics");
    assert!(
        String::from_utf8_lossy(&metrics.body)
            .contains("unitgate_control_flips_quarantined_total 1")
    );
    // Another restart does not unlock it by accident.
    drop(cp);
    let cp = ControlProcess::start(&config);
    let operator = cp.client(&tokens.operator);
    let refused = flip(&operator, "u03", held_for_confirmation("sz")).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);

    // Resolved by an operator: active again, unlocked, and flips work.
    let resolved: ResolveResult = operator
        .send_json(
            Method::POST,
            "/v1/units/u03/resolve",
            &serde_json::json!({"state": "active", "reason": "data checked by hand"}),
            T,
        )
        .await
        .expect("resolved");
    assert_eq!(resolved.lifted.as_deref(), Some(ids[0].as_str()));
    let current: StoredTable = operator.get_json("/v1/table", T).await.expect("table");
    assert_eq!(current.version, resolved.version);
    assert_eq!(
        unit_placement(&current.table, "u03"),
        ("sh".into(), "active".into())
    );
    let again = flip(
        &operator,
        "u03",
        serde_json::json!({"to": "sz", "mode": "planned", "reason": "after resolve"}),
    )
    .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_write_cannot_move_units_unless_forced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let cp = ControlProcess::start(&file_plane_config(dir.path(), &tokens));
    let admin = cp.client(&tokens.admin);
    let current: StoredTable = admin.get_json("/v1/table", T).await.expect("table");
    let mut table = current.table.clone();
    let u03 = table
        .units
        .iter_mut()
        .find(|u| u.name == "u03")
        .expect("u03");
    assert_eq!(u03.region, "sh");
    u03.region = "sz".into();
    u03.standby = Some("sh".into());
    let body = serde_json::to_vec(&table).expect("json");
    let put = |force: Option<&'static str>| {
        let admin = admin.clone();
        let body = body.clone();
        async move {
            let mut headers = vec![(
                http::header::IF_MATCH,
                http::HeaderValue::from(current.version),
            )];
            if let Some(reason) = force {
                headers.push((
                    http::HeaderName::from_static(control_api::FORCE_HEADER),
                    http::HeaderValue::from_static(reason),
                ));
            }
            admin
                .send(
                    Method::PUT,
                    "/v1/table",
                    &headers,
                    Some((body.into(), "application/json")),
                    T,
                )
                .await
                .expect("put answered")
        }
    };
    let refused = put(None).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let error = error_of(&refused);
    assert_eq!(error.error, "moves_units");
    assert!(
        error.message.contains("unit u03") && error.message.contains("unitctl flip u03"),
        "{error:?}"
    );
    let unchanged: StoredTable = admin.get_json("/v1/table", T).await.expect("table");
    assert_eq!(unchanged.version, current.version);
    // The plan says so beforehand.
    let plan: control_api::PlanResult = admin
        .send(
            Method::POST,
            "/v1/table/plan",
            &[],
            Some((body.clone().into(), "application/json")),
            T,
        )
        .await
        .expect("plan")
        .json()
        .expect("plan result");
    assert_eq!(
        plan.moves
            .iter()
            .map(|m| (m.unit.as_str(), m.to.as_deref()))
            .collect::<Vec<_>>(),
        vec![("u03", Some("sz"))]
    );
    assert!(plan.put_refused.is_some());

    let forced = put(Some("sh is being decommissioned")).await;
    assert_eq!(forced.status, StatusCode::OK);
    let stored: StoredTable = admin.get_json("/v1/table", T).await.expect("table");
    assert_eq!(stored.version, current.version + 1);
    assert_eq!(stored.forced.as_deref(), Some("sh is being decommissioned"));
    let entry = audit(&admin)
        .await
        .into_iter()
        .rev()
        .find(|e| e.version_after == Some(stored.version))
        .expect("audited");
    assert_eq!(entry.action, "table.put.forced");
    assert!(
        entry
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("u03 sh -> sz"),
        "{entry:?}"
    );
}

/// `min_gateways` holds a step even when the control plane knows no gateway of a region: a
/// flip then rolls back, naming the region short of gateways.
#[tokio::test(flavor = "multi_thread")]
async fn a_region_short_of_its_min_gateways_holds_the_flip_and_it_rolls_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let config = support::write_config_with(
        dir.path(),
        "cp",
        "127.0.0.1:0",
        &file_store(dir.path()),
        &tokens,
        "gateway_stale_after_s: 6\nmin_gateways: { hz: 1 }\n",
    );
    let cp = ControlProcess::start(&config);
    let operator = cp.client(&tokens.operator);
    let reply = flip(
        &operator,
        "u03",
        serde_json::json!({"to": "sz", "mode": "planned", "reason": "drill", "converge_timeout_s": 1}),
    )
    .await;
    let accepted: control_api::FlipAccepted = reply.json().expect("accepted");
    let done = flip_until(&operator, &accepted.id, "flip ended", |f| {
        f.state.is_final()
    })
    .await;
    assert_eq!(done.state, FlipState::RolledBack, "{done:?}");
    let failed = done
        .steps
        .iter()
        .find(|s| s.name == StepName::ConvergeFreeze)
        .expect("converge_freeze");
    assert!(
        failed
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("region hz has 0 of the 1 gateway(s) it needs"),
        "{failed:?}"
    );
    // A gateway of hz reporting the freeze version is what the step needed.
    let hz = cp.client(tokens.gateway("hz"));
    let current: StoredTable = operator.get_json("/v1/table", T).await.expect("table");
    post_report(&hz, "hz-1", "hz", current.version, Some(&current.digest)).await;
    let reply = flip(
        &operator,
        "u03",
        serde_json::json!({"to": "sz", "mode": "planned", "reason": "drill", "replication_check": {"confirm": true}}),
    )
    .await;
    let accepted: control_api::FlipAccepted = reply.json().expect("accepted");
    let held = flip_until(&operator, &accepted.id, "waiting for hz", |f| {
        f.steps.last().is_some_and(|s| {
            s.name == StepName::ConvergeFreeze && s.outcome == StepOutcome::Running
        })
    })
    .await;
    let freeze = held
        .steps
        .iter()
        .find(|s| s.name == StepName::Freeze)
        .and_then(|s| s.version)
        .expect("freeze version");
    post_report(&hz, "hz-1", "hz", freeze, None).await;
    flip_until(&operator, &accepted.id, "replication", |f| {
        f.steps
            .last()
            .is_some_and(|s| s.name == StepName::Replication)
    })
    .await;
}

/// Refusals before authentication are counted, not written to the audit log one fsynced line
/// each; what a caller sends is capped in the audit log.
#[tokio::test(flavor = "multi_thread")]
async fn anonymous_calls_do_not_grow_the_audit_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let cp = ControlProcess::start(&file_plane_config(dir.path(), &tokens));
    let audit_path = dir.path().join("store/audit.jsonl");
    let before = std::fs::metadata(&audit_path).expect("audit log").len();
    let anonymous = Client::new(&cp.url, None, None).expect("client");
    let long_unit = "u".repeat(60_000);
    for _ in 0..300 {
        let reply = anonymous
            .send(
                Method::POST,
                &format!("/v1/units/{long_unit}/flip"),
                &[],
                None,
                T,
            )
            .await
            .expect("answered");
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        std::fs::metadata(&audit_path).expect("audit log").len(),
        before,
        "no audit line for calls without a valid token"
    );
    // An operator's refused call is audited, its target cut to a bounded length.
    let reply = cp
        .client(&tokens.viewer)
        .send(
            Method::POST,
            &format!("/v1/units/{long_unit}/flip"),
            &[],
            None,
            T,
        )
        .await
        .expect("answered");
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let entry = audit(&cp.client(&tokens.viewer))
        .await
        .pop()
        .expect("audited");
    assert_eq!(entry.status, Some(403));
    assert!(entry.target.len() < 1100, "{}", entry.target.len());
    assert!(
        entry.target.ends_with("bytes cut)"),
        "{}",
        &entry.target[1000..]
    );
}
