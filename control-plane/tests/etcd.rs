//! The etcd store with a real etcd: compare-and-swap table writes, two replicas sharing one
//! cluster, and a replica killed mid-flip.
#![cfg(feature = "etcd")]

mod support;

use std::time::Duration;

use control_api::{FlipState, StepName, StepOutcome};
use support::{
    ControlProcess, Tokens, applied, flip_at, flip_request, flip_until, gateway, stored_by,
    table_at_least, unit_placement, write_config,
};
use testkit::Etcd;

fn etcd_store(etcd: &Etcd, prefix: &str) -> String {
    format!(
        "{{ etcd: {{ endpoints: [\"{}\"], prefix: \"{prefix}\", flip_lease_s: 2 }} }}",
        etcd.endpoint
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_with_one_if_match_have_one_winner_on_etcd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(dir.path()).await;
    let tokens = Tokens::new();
    let store = etcd_store(&etcd, "/race/");
    let a = ControlProcess::start(&write_config(
        dir.path(),
        "a",
        "127.0.0.1:0",
        &store,
        &tokens,
    ));
    let b = ControlProcess::start(&write_config(
        dir.path(),
        "b",
        "127.0.0.1:0",
        &store,
        &tokens,
    ));
    support::race_table_writes(&a, &tokens).await;
    // The other replica sees the winner too, once its watch of etcd brings it.
    let via_b = table_at_least(&b.client(&tokens.viewer), 2).await;
    assert_eq!(via_b.version, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_flips_and_a_dead_replicas_flip_is_rolled_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(dir.path()).await;
    let tokens = Tokens::new();
    let store = etcd_store(&etcd, "/shared/");
    let mut a = ControlProcess::start(&write_config(
        dir.path(),
        "a",
        "127.0.0.1:0",
        &store,
        &tokens,
    ));
    let b = ControlProcess::start(&write_config(
        dir.path(),
        "b",
        "127.0.0.1:0",
        &store,
        &tokens,
    ));
    // Two gateways watch replica B, one watches A.
    let gateways = vec![
        gateway(
            "hz",
            &b.url,
            tokens.gateway("hz"),
            &dir.path().join("c0"),
            "hz-b",
        )
        .await,
        gateway(
            "sh",
            &b.url,
            tokens.gateway("sh"),
            &dir.path().join("c1"),
            "sh-b",
        )
        .await,
        gateway(
            "sz",
            &a.url,
            tokens.gateway("sz"),
            &dir.path().join("c2"),
            "sz-a",
        )
        .await,
    ];
    for g in &gateways {
        applied(g, 1).await;
    }
    let via_a = a.client(&tokens.operator);
    let via_b = b.client(&tokens.operator);
    // A flip through A that completes: B shows it, gateways on B serve it.
    let accepted = via_a
        .start_flip(
            "u04",
            &flip_request(serde_json::json!({"to": "sz", "mode": "planned", "reason": "drill"})),
        )
        .await
        .expect("flip");
    let done = flip_until(&via_b, &accepted.id, "seen through B", |f| {
        f.state.is_final()
    })
    .await;
    assert_eq!(done.state, FlipState::Succeeded, "{done:?}");
    let converged = done
        .steps
        .iter()
        .find(|s| s.name == StepName::ConvergeUnfreeze)
        .expect("step");
    assert_eq!(
        converged.detail.as_deref(),
        Some("3 live gateway(s) serve version 4"),
        "A waited for B's gateways too"
    );
    for g in &gateways {
        applied(g, 4).await;
        assert_eq!(
            unit_placement(g.store.current().expect("table").table.raw(), "u04"),
            ("sz".into(), "active".into())
        );
    }
    // A flip through A, held at the replication check; A dies.
    // The gateway that watched A cannot report the rollback: B waits for it, naming it,
    // until the rollback's convergence times out (here 5 s); the rollback stands either way.
    let accepted = via_a        .start_flip("u01", &flip_request(serde_json::json!({"to": "sh", "mode": "planned", "reason": "drill", "replication_check": {"confirm": true}, "converge_timeout_s": 5})))        .await        .expect("flip");
    let held = flip_until(&via_b, &accepted.id, "held at replication", |f| {
        f.steps
            .last()
            .is_some_and(|s| s.name == StepName::Replication && s.outcome == StepOutcome::Running)
    })
    .await;
    assert_eq!(held.owner, "a");
    for g in &gateways {
        applied(g, 5).await;
        assert_eq!(
            unit_placement(g.store.current().expect("table").table.raw(), "u01"),
            ("hz".into(), "write_frozen".into())
        );
    }
    a.kill9();
    // B takes it over once A's lease expires, and rolls it back: never half-applied.
    let ended = flip_until(&via_b, &accepted.id, "taken over", |f| f.state.is_final()).await;
    assert_eq!(ended.state, FlipState::RolledBack, "{ended:?}");
    assert_eq!(ended.owner, "b");
    let now = via_b.table().await.expect("table");
    assert_eq!(now.version, 6);
    assert_eq!(
        unit_placement(&now.table, "u01"),
        ("hz".into(), "active".into())
    );
    for g in &gateways[..2] {
        applied(g, 6).await;
    }
    // A comes back: it serves the same truth, and its gateway converges.
    let config = a.config.clone();
    let addr = a.addr;
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("listen: 127.0.0.1:0", &format!("listen: {addr}"));
    std::fs::write(&config, text).expect("write");
    let a = ControlProcess::start(&config);
    let via_a = a.client(&tokens.viewer).table().await.expect("table");
    assert_eq!(via_a.version, 6);
    applied(&gateways[2], 6).await;
}

/// A flip through replica A right after gateways connected to replica B waits for them: A
/// reads the fleet from etcd before each wait instead of trusting what its own watch has
/// delivered so far. Each round adds three gateways that A has never heard of.
#[tokio::test(flavor = "multi_thread")]
async fn a_flip_through_one_replica_waits_for_gateways_that_just_connected_to_the_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(dir.path()).await;
    let tokens = Tokens::new();
    let store = etcd_store(&etcd, "/fresh/");
    let a = ControlProcess::start(&write_config(
        dir.path(),
        "a",
        "127.0.0.1:0",
        &store,
        &tokens,
    ));
    let b = ControlProcess::start(&write_config(
        dir.path(),
        "b",
        "127.0.0.1:0",
        &store,
        &tokens,
    ));
    let via_a = a.client(&tokens.operator);
    let mut gateways = Vec::new();
    for round in 0..10 {
        for region in ["hz", "sh", "sz"] {
            gateways.push(
                gateway(
                    region,
                    &b.url,
                    tokens.gateway(region),
                    &dir.path().join(format!("cache-{region}-{round}")),
                    &format!("{region}-r{round}"),
                )
                .await,
            );
        }
        // Gateway::start returns once the gateway fetched the table through B: it is
        // connected, and B has recorded it. The flip goes through A at once.
        let current = via_a.table().await.expect("table");
        let to = if unit_placement(&current.table, "u04").0 == "sh" {
            "sz"
        } else {
            "sh"
        };
        let accepted = via_a            .start_flip("u04", &flip_request(serde_json::json!({"to": to, "mode": "planned", "reason": format!("round {round}")})))            .await            .expect("flip");
        let done = flip_until(&via_a, &accepted.id, "flip ended", |f| f.state.is_final()).await;
        assert_eq!(done.state, FlipState::Succeeded, "round {round}: {done:?}");
        let expected = gateways.len();
        for step in done.steps.iter().filter(|s| {
            matches!(
                s.name,
                StepName::ConvergeFreeze | StepName::ConvergeSwitch | StepName::ConvergeUnfreeze
            )
        }) {
            let version = step.version.expect("a converge step names its version");
            assert_eq!(
                step.detail.as_deref(),
                Some(format!("{expected} live gateway(s) serve version {version}").as_str()),
                "round {round}: {} waited for every gateway, those connected to B included",
                step.name
            );
        }
        let last = done.steps.last().and_then(|s| s.version).expect("version");
        for g in &gateways {
            applied(g, last).await;
        }
    }
}

/// An unreadable flip record in etcd is set aside by the replica that recovers flips; its
/// unit stays locked until an operator resolves it.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_flip_record_on_etcd_is_quarantined_and_its_unit_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(dir.path()).await;
    let tokens = Tokens::new();
    let store = etcd_store(&etcd, "/quarantine/");
    let mut a = ControlProcess::start(&write_config(
        dir.path(),
        "a",
        "127.0.0.1:0",
        &store,
        &tokens,
    ));
    let via_a = a.client(&tokens.operator);
    let accepted = via_a        .start_flip("u03", &flip_request(serde_json::json!({"to": "sz", "mode": "planned", "reason": "drill", "replication_check": {"confirm": true, "timeout_s": 600}})))        .await        .expect("flip");
    flip_until(&via_a, &accepted.id, "held at replication", |f| {
        f.steps
            .last()
            .is_some_and(|s| s.name == StepName::Replication && s.outcome == StepOutcome::Running)
    })
    .await;
    a.kill9();
    let mut client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .expect("etcd");
    client
        .put(
            format!("/quarantine/flips/{}", accepted.id),
            "{\"id\": \"cut off",
            None,
        )
        .await
        .expect("put");

    let b = ControlProcess::start(&write_config(
        dir.path(),
        "b",
        "127.0.0.1:0",
        &store,
        &tokens,
    ));
    let via_b = b.client(&tokens.operator);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let locked = loop {
        let status = via_b.status().await.expect("status");
        let u03 = status
            .units
            .into_iter()
            .find(|u| u.name == "u03")
            .expect("u03");
        if let Some(locked) = u03.locked {
            break locked;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "u03 was never locked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(locked.contains(&accepted.id), "{locked}");
    let flips = via_b.flips().await.expect("flips");
    assert!(flips.iter().all(|f| f.id != accepted.id));
    let refused = via_b
        .start_flip(
            "u03",
            &flip_request(serde_json::json!({"to": "sz", "mode": "planned", "reason": "again"})),
        )
        .await
        .expect_err("locked");
    assert_eq!(
        refused.status(),
        Some(http::StatusCode::CONFLICT),
        "{refused}"
    );
    let resolve = control_api::ResolveRequest {
        state: router_rules::UnitState::Active,
        reason: "checked".into(),
    };
    let resolved = via_b.resolve_unit("u03", &resolve).await.expect("resolved");
    assert_eq!(resolved.lifted.as_deref(), Some(accepted.id.as_str()));
    let again = via_b
        .start_flip(
            "u03",
            &flip_request(
                serde_json::json!({"to": "sz", "mode": "planned", "reason": "after resolve"}),
            ),
        )
        .await
        .expect("a flip starts again");
    let done = flip_until(&via_b, &again.id, "ended", |f| f.state.is_final()).await;
    assert_eq!(done.state, FlipState::Succeeded, "{done:?}");
}

/// An evacuation through replica A, held at its replication check with both units frozen;
/// A dies. B takes it over once A's leases expire and rolls both units back in one version:
/// never one moved and the other not.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_evacuation_leaves_every_unit_the_same_way_on_etcd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(dir.path()).await;
    let tokens = Tokens::new();
    let store = etcd_store(&etcd, "/evacuation/");
    let mut a = ControlProcess::start(&write_config(
        dir.path(),
        "a",
        "127.0.0.1:0",
        &store,
        &tokens,
    ));
    let b = ControlProcess::start(&write_config(
        dir.path(),
        "b",
        "127.0.0.1:0",
        &store,
        &tokens,
    ));
    let via_a = a.client(&tokens.operator);
    let via_b = b.client(&tokens.operator);
    let request = serde_json::from_value(serde_json::json!({
        "mode": "planned", "reason": "drill", "replication_check": {"confirm": true}
    }))
    .expect("request");
    let accepted = via_a.evacuate("sz", &request).await.expect("evacuation");
    let held = flip_until(&via_b, &accepted.id, "held at replication", |f| {
        f.steps
            .last()
            .is_some_and(|s| s.name == StepName::Replication && s.outcome == StepOutcome::Running)
    })
    .await;
    assert_eq!(held.owner, "a");
    // B serves the freeze A stored once its watch of etcd brings it.
    let frozen = table_at_least(&via_b, stored_by(&held, StepName::Freeze)).await;
    for unit in ["u05", "u06"] {
        assert_eq!(
            unit_placement(&frozen.table, unit),
            ("sz".into(), "write_frozen".into())
        );
    }
    a.kill9();
    let ended = flip_until(&via_b, &accepted.id, "taken over", |f| f.state.is_final()).await;
    assert_eq!(ended.state, FlipState::RolledBack, "{ended:?}");
    assert_eq!(ended.owner, "b");
    let now = via_b.table().await.expect("table");
    assert_eq!(now.version, frozen.version + 1, "one rollback version");
    for unit in ["u05", "u06"] {
        assert_eq!(
            unit_placement(&now.table, unit),
            ("sz".into(), "active".into())
        );
    }
}

/// A flip's runner whose lease ran out (etcd unreachable for longer than the lease, here the
/// lease revoked) while a recovery took the flip over writes nothing more: not the switch,
/// not the flip's record. The recovery's rollback is the flip's only end, and no version
/// ever put the unit in its new region. (The lock names the lease as well as the flip, so the
/// runner's fenced writes fail.)
#[tokio::test(flavor = "multi_thread")]
async fn a_runner_whose_lease_ran_out_writes_nothing_once_a_recovery_took_its_flip_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(dir.path()).await;
    let tokens = Tokens::new();
    let cp = ControlProcess::start(&support::write_config_with(
        dir.path(),
        "a",
        "127.0.0.1:0",
        &etcd_store(&etcd, "/fence/"),
        &tokens,
        "gateway_stale_after_s: 60\nmin_gateways: { hz: 1 }\n",
    ));
    let operator = cp.client(&tokens.operator);
    let hz = cp.client(tokens.gateway("hz"));
    let report = |version: u64| {
        let hz = hz.clone();
        async move {
            hz.report(&control_api::GatewayReport {
                gateway: "hz-1".into(),
                region: "hz".into(),
                applied: version,
                digest: None,
                rejected: None,
                leaving: false,
            })
            .await
            .expect("reported");
        }
    };
    report(1).await;
    // The rollback's convergence is never reported: the recovery holds the lock meanwhile.
    let accepted = operator
        .start_flip(
            "u03",
            &flip_request(serde_json::json!({"to": "sz", "mode": "planned", "reason": "drill", "converge_timeout_s": 8, "replication_check": {"delay_s": 3}})),
        )
        .await
        .expect("flip");
    let waiting = flip_at(&operator, &accepted.id, StepName::ConvergeFreeze).await;
    report(stored_by(&waiting, StepName::Freeze)).await;
    flip_at(&operator, &accepted.id, StepName::Replication).await;
    let mut client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .expect("etcd");
    let lock = client
        .get("/fence/locks/u03", None)
        .await
        .expect("lock")
        .kvs()
        .first()
        .map(|kv| kv.lease())
        .expect("the flip holds u03's lock");
    client.lease_revoke(lock).await.expect("revoked");
    let ended = flip_until(&operator, &accepted.id, "taken over", |f| {
        f.state.is_final()
    })
    .await;
    assert_eq!(ended.state, FlipState::RolledBack, "{ended:?}");
    // The runner's wait ended long before the recovery's; still nothing of it was written.
    let now = operator.table().await.expect("table");
    assert_eq!(
        unit_placement(&now.table, "u03"),
        ("sh".into(), "active".into())
    );
    for version in 1..=now.version {
        let stored = operator.table_version(version).await.expect("version");
        assert_eq!(
            unit_placement(&stored.table, "u03").0,
            "sh",
            "version {version} moved u03"
        );
    }
    let ends = operator
        .audit(None)
        .await
        .expect("audit")
        .into_iter()
        .filter(|e| e.action == "flip.end" && e.flip.as_deref() == Some(&accepted.id))
        .count();
    assert_eq!(ends, 1);
    let again = operator.flip(&accepted.id).await.expect("flip");
    assert_eq!(again.state, FlipState::RolledBack, "{again:?}");
}
