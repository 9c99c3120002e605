//! A flip keeps its promise under faults: a version number names one content, a gateway
//! token speaks only for its own gateways, one unreadable flip record stops nothing else, and
//! units move only by flips unless an admin forces it.

mod support;

use std::time::Duration;

use control_api::{
    ApiError, AuditEntry, AuditOutcome, Client, ClientError, FlipAccepted, FlipState,
    GatewayReport, GatewayStatus, PutTable, ResolveRequest, StepName, StepOutcome, TableText,
    WatchQuery, paths,
};
use http::{Method, StatusCode};
use support::{
    ControlProcess, Tokens, applied, file_plane_config, file_store, flip_at, flip_request,
    flip_until, gateway, stored_by, unit_placement, write_config,
};

const T: Duration = Duration::from_secs(10);

async fn post_report(
    client: &Client,
    gateway: &str,
    region: &str,
    applied: u64,
    digest: Option<&str>,
) -> Result<(), ClientError> {
    client
        .report(&GatewayReport {
            gateway: gateway.into(),
            region: region.into(),
            applied,
            digest: digest.map(str::to_owned),
            rejected: None,
            leaving: false,
        })
        .await
}

async fn audit(client: &Client) -> Vec<AuditEntry> {
    client.audit(None).await.expect("audit")
}

async fn gateways(client: &Client) -> Vec<GatewayStatus> {
    client.gateways().await.expect("gateways")
}

/// The status and the error body of a call the control plane refused.
fn refusal<V: std::fmt::Debug>(result: Result<V, ClientError>) -> (StatusCode, ApiError) {
    match result {
        Err(ClientError::Api { status, error }) => (status, error),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A gateway's watch that asks for no hold.
fn watch_query<'a>(gateway: &'a str, region: &'a str, after: u64, applied: u64) -> WatchQuery<'a> {
    WatchQuery {
        after,
        applied,
        digest: None,
        gateway,
        region,
        hold_s: 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_gateway_reports_are_refused_audited_and_never_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let cp = ControlProcess::start(&file_plane_config(dir.path(), &tokens));
    let hz = cp.client(tokens.gateway("hz"));
    let viewer = cp.client(&tokens.viewer);

    // The hz token speaks for hz-* in hz only.
    post_report(&hz, "hz-1", "hz", 1, None)
        .await
        .expect("an honest report");
    for (id, region) in [
        ("hz-2", "sh"),
        ("sh-1", "sh"),
        ("sh-1", "hz"),
        ("x", "nowhere"),
    ] {
        let (status, error) = refusal(post_report(&hz, id, region, 1, None).await);
        assert_eq!(status, StatusCode::FORBIDDEN, "{id} in {region}");
        assert_eq!(error.error, "gateway_not_allowed");
    }
    let (status, _) = refusal(hz.watch(&watch_query("sz-9", "sz", 0, 0), T).await);
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A version never stored is refused too.
    let (status, error) = refusal(post_report(&hz, "hz-1", "hz", 999_999, None).await);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(error.message.contains("never stored"), "{error:?}");
    let never = watch_query("hz-3", "hz", 999_999, 999_999);
    let (status, _) = refusal(hz.watch(&never, T).await);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

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
    let metrics = viewer.metrics().await.expect("metrics");
    assert!(
        metrics.contains("unitgate_control_gateway_reports_refused_total 7"),
        "{}",
        metrics
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_diverged_gateway_is_marked_and_sent_the_stored_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let cp = ControlProcess::start(&file_plane_config(dir.path(), &tokens));
    let hz = cp.client(tokens.gateway("hz"));
    let viewer = cp.client(&tokens.viewer);
    let stored = viewer.table().await.expect("table");
    assert_eq!(stored.digest, control_api::table_digest(&stored.table));
    let forged = format!("sha256:{}", "0".repeat(64));

    // Serving version 1 with other content: listed as diverged, counted in the metrics.
    post_report(&hz, "hz-1", "hz", 1, Some(&forged))
        .await
        .expect("reported");
    let fleet = gateways(&viewer).await;
    assert!(fleet[0].diverged, "{fleet:?}");
    let metrics = viewer.metrics().await.expect("metrics");
    assert!(metrics.contains("unitgate_control_gateways{state=\"diverged\"} 1"));
    // Its watch is answered at once with the stored version 1, although it asks for newer.
    let diverged = WatchQuery {
        digest: Some(&forged),
        hold_s: 2,
        ..watch_query("hz-1", "hz", 1, 1)
    };
    let watch = hz
        .watch(&diverged, T)
        .await
        .expect("watch")
        .expect("the stored table");
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
    post_report(&hz, "hz-1", "hz", 1, Some(&stored.digest))
        .await
        .expect("reported");
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
        let current = admin.table().await.expect("table");
        let mut table = current.table.clone();
        table.units[0].pinned_keys = vec![format!("vip-{n}")];
        let put = PutTable {
            if_match: current.version,
            ..Default::default()
        };
        admin
            .put_table(&TableText::of(&table), &put)
            .await
            .expect("put");
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
    let current = cp.client(&tokens.viewer).table().await.expect("table");
    assert_eq!(current.version, 3);
    assert_eq!(current.table.units[0].pinned_keys, vec!["vip-1".to_owned()]);
}

async fn flip(
    client: &Client,
    unit: &str,
    body: serde_json::Value,
) -> Result<FlipAccepted, ClientError> {
    client.start_flip(unit, &flip_request(body)).await
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
        let accepted = flip(&operator, unit, held_for_confirmation(to))
            .await
            .expect("accepted");
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
    let flips = operator.flips().await.expect("flips");
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
    let status = operator.status().await.expect("status");
    let u03 = status.units.iter().find(|u| u.name == "u03").expect("u03");
    assert_eq!(u03.state, "write_frozen");
    assert!(
        u03.locked.as_deref().unwrap_or_default().contains(&ids[0]),
        "{u03:?}"
    );
    let (status, error) = refusal(flip(&operator, "u03", held_for_confirmation("sz")).await);
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error.error, "unit_locked");
    assert!(error.message.contains("flip-resolve"));
    let audit_log = audit(&operator).await;
    assert!(
        audit_log
            .iter()
            .any(|e| e.action == "flip.quarantine" && e.target == "u03"),
        "{audit_log:?}"
    );
    let metrics = operator.metrics().await.expect("metrics");
    assert!(metrics.contains("unitgate_control_flips_quarantined_total 1"));
    // Another restart does not unlock it by accident.
    drop(cp);
    let cp = ControlProcess::start(&config);
    let operator = cp.client(&tokens.operator);
    let (status, _) = refusal(flip(&operator, "u03", held_for_confirmation("sz")).await);
    assert_eq!(status, StatusCode::CONFLICT);

    // Resolved by an operator: active again, unlocked, and flips work.
    let resolve = ResolveRequest {
        state: router_rules::UnitState::Active,
        reason: "data checked by hand".into(),
    };
    let resolved = operator
        .resolve_unit("u03", &resolve)
        .await
        .expect("resolved");
    assert_eq!(resolved.lifted.as_deref(), Some(ids[0].as_str()));
    let current = operator.table().await.expect("table");
    assert_eq!(current.version, resolved.version);
    assert_eq!(
        unit_placement(&current.table, "u03"),
        ("sh".into(), "active".into())
    );
    flip(
        &operator,
        "u03",
        serde_json::json!({"to": "sz", "mode": "planned", "reason": "after resolve"}),
    )
    .await
    .expect("a flip starts again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_write_cannot_move_units_unless_forced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let cp = ControlProcess::start(&file_plane_config(dir.path(), &tokens));
    let admin = cp.client(&tokens.admin);
    let current = admin.table().await.expect("table");
    let mut table = current.table.clone();
    let u03 = table
        .units
        .iter_mut()
        .find(|u| u.name == "u03")
        .expect("u03");
    assert_eq!(u03.region, "sh");
    u03.region = "sz".into();
    u03.standby = Some("sh".into());
    let body = TableText::of(&table);
    let put = |force: Option<&'static str>| {
        let admin = admin.clone();
        let body = body.clone();
        let put = PutTable {
            if_match: current.version,
            reason: None,
            force,
        };
        async move { admin.put_table(&body, &put).await }
    };
    let (status, error) = refusal(put(None).await);
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error.error, "moves_units");
    assert!(
        error.message.contains("unit u03") && error.message.contains("unitctl flip u03"),
        "{error:?}"
    );
    let unchanged = admin.table().await.expect("table");
    assert_eq!(unchanged.version, current.version);
    // The plan says so beforehand.
    let plan = admin.plan(&body).await.expect("plan result");
    assert_eq!(
        plan.moves
            .iter()
            .map(|m| (m.unit.as_str(), m.to.as_deref()))
            .collect::<Vec<_>>(),
        vec![("u03", Some("sz"))]
    );
    assert!(plan.put_refused.is_some());

    put(Some("sh is being decommissioned"))
        .await
        .expect("forced");
    let stored = admin.table().await.expect("table");
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
    let accepted = flip(
        &operator,
        "u03",
        serde_json::json!({"to": "sz", "mode": "planned", "reason": "drill", "converge_timeout_s": 1}),
    )
    .await
    .expect("accepted");
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
    let current = operator.table().await.expect("table");
    post_report(&hz, "hz-1", "hz", current.version, Some(&current.digest))
        .await
        .expect("reported");
    let accepted = flip(
        &operator,
        "u03",
        serde_json::json!({"to": "sz", "mode": "planned", "reason": "drill", "replication_check": {"confirm": true}}),
    )
    .await
    .expect("accepted");
    let held = flip_until(&operator, &accepted.id, "waiting for hz", |f| {
        f.steps.last().is_some_and(|s| {
            s.name == StepName::ConvergeFreeze && s.outcome == StepOutcome::Running
        })
    })
    .await;
    post_report(&hz, "hz-1", "hz", stored_by(&held, StepName::Freeze), None)
        .await
        .expect("reported");
    flip_at(&operator, &accepted.id, StepName::Replication).await;
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
                &paths::fill(paths::UNIT_FLIP, &[&long_unit]),
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
            &paths::fill(paths::UNIT_FLIP, &[&long_unit]),
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

/// Once the unfreeze is stored the units take writes in their new regions, which the old ones
/// never saw: a gateway that does not confirm the unfreeze, or an operator's cancel while it
/// is awaited, ends the flip as done (the step says who did not follow), never moves the unit
/// back.
#[tokio::test(flavor = "multi_thread")]
async fn a_flip_whose_unfreeze_is_stored_is_never_rolled_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let config = support::write_config_with(
        dir.path(),
        "cp",
        "127.0.0.1:0",
        &file_store(dir.path()),
        &tokens,
        "gateway_stale_after_s: 30\nmin_gateways: { hz: 1 }\n",
    );
    let cp = ControlProcess::start(&config);
    let operator = cp.client(&tokens.operator);
    let hz = cp.client(tokens.gateway("hz"));
    let current = operator.table().await.expect("table");
    post_report(&hz, "hz-1", "hz", current.version, Some(&current.digest))
        .await
        .expect("reported");
    for cancel in [false, true] {
        let (from, to) = if cancel { ("sz", "sh") } else { ("sh", "sz") };
        let accepted = flip(
            &operator,
            "u03",
            serde_json::json!({"to": to, "mode": "planned", "reason": "drill", "converge_timeout_s": if cancel { 600 } else { 2 }}),
        )
        .await
        .expect("accepted");
        // hz's gateway follows the freeze and the switch, not the unfreeze.
        for (stored, step) in [
            (StepName::Freeze, StepName::ConvergeFreeze),
            (StepName::Switch, StepName::ConvergeSwitch),
        ] {
            let waiting = flip_at(&operator, &accepted.id, step).await;
            post_report(&hz, "hz-1", "hz", stored_by(&waiting, stored), None)
                .await
                .expect("reported");
        }
        flip_until(&operator, &accepted.id, "the unfreeze awaited", |f| {
            f.steps.last().is_some_and(|s| {
                s.name == StepName::ConvergeUnfreeze && s.outcome == StepOutcome::Running
            })
        })
        .await;
        if cancel {
            operator.cancel_flip(&accepted.id).await.expect("cancelled");
        }
        let done = flip_until(&operator, &accepted.id, "flip ended", |f| {
            f.state.is_final()
        })
        .await;
        assert_eq!(
            done.state,
            FlipState::Succeeded,
            "cancel {cancel}: {done:?}"
        );
        assert!(
            !done.steps.iter().any(|s| s.name == StepName::Rollback),
            "{done:?}"
        );
        let table = operator.table().await.expect("table");
        assert_eq!(
            unit_placement(&table.table, "u03"),
            (to.to_owned(), "active".to_owned()),
            "moved from {from}"
        );
        post_report(&hz, "hz-1", "hz", table.version, None)
            .await
            .expect("reported");
    }
}

/// A flip owns its units' placement until it ends: a table write that would change the region,
/// state or slots of one (the "back to version N" recipe run during the replication wait would
/// unfreeze it in its old region) is refused, forced or not, and the plan says so; other
/// changes go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_write_cannot_touch_a_unit_while_its_flip_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let cp = ControlProcess::start(&file_plane_config(dir.path(), &tokens));
    let admin = cp.client(&tokens.admin);
    let first = admin.table().await.expect("table");
    let accepted = flip(&admin, "u03", held_for_confirmation("sz"))
        .await
        .expect("accepted");
    let held = flip_at(&admin, &accepted.id, StepName::Replication).await;
    let frozen = stored_by(&held, StepName::Freeze);
    // Version 1's table again, on top of the freeze: u03 active in sh.
    let body = TableText::of(&first.table);
    for force in [None, Some("back to v1")] {
        let put = PutTable {
            if_match: frozen,
            reason: None,
            force,
        };
        let (status, error) = refusal(admin.put_table(&body, &put).await);
        assert_eq!(status, StatusCode::CONFLICT, "{error:?}");
        assert_eq!(error.error, "unit_flipping");
        assert!(
            error.message.contains("unit u03") && error.message.contains(&accepted.id),
            "{error:?}"
        );
    }
    let plan = admin.plan(&body).await.expect("plan result");
    assert!(
        plan.put_refused
            .as_deref()
            .is_some_and(|why| why.contains("has flip")),
        "{plan:?}"
    );
    let now = admin.table().await.expect("table");
    assert_eq!(now.version, frozen);
    assert_eq!(
        unit_placement(&now.table, "u03"),
        ("sh".to_owned(), "write_frozen".to_owned())
    );
    // Another unit's change is an ordinary write.
    let mut table = now.table.clone();
    let u05 = table
        .units
        .iter_mut()
        .find(|u| u.name == "u05")
        .expect("u05");
    u05.state = router_rules::UnitState::WriteFrozen;
    let put = PutTable {
        if_match: frozen,
        reason: None,
        force: None,
    };
    admin
        .put_table(&TableText::of(&table), &put)
        .await
        .expect("stored");
    admin.cancel_flip(&accepted.id).await.expect("cancelled");
}

/// A gateway that stops says so and leaves the fleet (audited as `gateway.leave`): flips stop
/// waiting for it. One that goes quiet without saying so stays, and a flip waits for it,
/// naming it stale, until an operator forgets it.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_that_leaves_is_forgotten_and_a_quiet_one_is_waited_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let config = support::write_config_with(
        dir.path(),
        "cp",
        "127.0.0.1:0",
        &file_store(dir.path()),
        &tokens,
        "gateway_stale_after_s: 1\n",
    );
    let cp = ControlProcess::start(&config);
    let operator = cp.client(&tokens.operator);
    let hz = cp.client(tokens.gateway("hz"));
    post_report(&hz, "hz-quiet", "hz", 1, None)
        .await
        .expect("reported");
    post_report(&hz, "hz-leaving", "hz", 1, None)
        .await
        .expect("reported");
    hz.report(&GatewayReport {
        gateway: "hz-leaving".into(),
        region: "hz".into(),
        applied: 1,
        digest: None,
        rejected: None,
        leaving: true,
    })
    .await
    .expect("left");
    let fleet = gateways(&operator).await;
    assert_eq!(
        fleet.iter().map(|g| g.id.as_str()).collect::<Vec<_>>(),
        vec!["hz-quiet"]
    );
    assert!(
        audit(&operator)
            .await
            .iter()
            .any(|e| e.action == "gateway.leave" && e.target == "hz-leaving"),
        "audited"
    );
    // hz-quiet goes stale (1 s) and still holds the flip's freeze.
    let accepted = flip(
        &operator,
        "u03",
        serde_json::json!({"to": "sz", "mode": "planned", "reason": "drill", "converge_timeout_s": 3}),
    )
    .await
    .expect("accepted");
    let done = flip_until(&operator, &accepted.id, "flip ended", |f| {
        f.state.is_final()
    })
    .await;
    assert_eq!(done.state, FlipState::RolledBack, "{done:?}");
    let error = done.error.unwrap_or_default();
    assert!(
        error.contains("hz-quiet (hz, serves 1, not heard from for")
            && error.contains("unitctl gateway-forget hz-quiet"),
        "{error}"
    );
    // Forgotten, it holds nothing.
    operator
        .forget_gateway("hz-quiet")
        .await
        .expect("forgotten");
    let accepted = flip(
        &operator,
        "u03",
        serde_json::json!({"to": "sz", "mode": "planned", "reason": "drill", "converge_timeout_s": 3}),
    )
    .await
    .expect("accepted");
    let done = flip_until(&operator, &accepted.id, "flip ended", |f| {
        f.state.is_final()
    })
    .await;
    assert_eq!(done.state, FlipState::Succeeded, "{done:?}");
}
