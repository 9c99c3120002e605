//! `kill -9` of a file-store control plane between the steps of a flip, then a restart: no
//! stored version or audit entry is lost, and the flip ends consistently (rolled back, or
//! completed when its last table change was already stored).

mod support;

use control_api::{
    Client, FlipMode, FlipRecord, FlipRequest, FlipState, GatewayReport, ReplicationCheck,
    StepName, StepOutcome, StoredTable,
};
use support::{
    ControlProcess, Tokens, audit_after_end, file_plane_config, flip_until, unit_placement,
};

async fn report(gateway: &Client, applied: u64) {
    gateway
        .report(&GatewayReport {
            gateway: "hz-slow".into(),
            region: "hz".into(),
            applied,
            digest: None,
            rejected: None,
            leaving: false,
        })
        .await
        .expect("report");
}

/// The gateway follows the rollback the recovered flip stores: flips wait for every gateway
/// of the fleet, this quiet one too.
async fn follow_rollback(operator: &Client, gateway: &Client, id: &str) {
    let rolling = flip_until(operator, id, "the rollback stored", |f| {
        f.state.is_final()
            || f.steps
                .iter()
                .any(|s| s.name == StepName::Rollback && s.version.is_some())
    })
    .await;
    if let Some(version) = rolling
        .steps
        .iter()
        .find(|s| s.name == StepName::Rollback)
        .and_then(|s| s.version)
    {
        report(gateway, version).await;
    }
}

fn waiting_at(step: StepName) -> impl Fn(&FlipRecord) -> bool {
    move |f| {
        f.steps
            .last()
            .is_some_and(|s| s.name == step && s.outcome == StepOutcome::Running)
    }
}

async fn versions(client: &Client) -> Vec<StoredTable> {
    let current = client.table().await.expect("table");
    let mut out = Vec::new();
    for v in 1..=current.version {
        out.push(client.table_version(v).await.expect("stored version"));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_between_flip_steps_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let config = file_plane_config(dir.path(), &tokens);
    let mut cp = ControlProcess::start(&config);
    // (where the flip is when the process dies, how the flip must end)
    let points = [
        (StepName::ConvergeFreeze, FlipState::RolledBack),
        (StepName::Replication, FlipState::RolledBack),
        (StepName::ConvergeSwitch, FlipState::RolledBack),
        (StepName::ConvergeUnfreeze, FlipState::Succeeded),
    ];
    for (round, (kill_at, ending)) in points.into_iter().enumerate() {
        let operator = cp.client(&tokens.operator);
        let gateway = cp.client(tokens.gateway("hz"));
        let before = operator.table().await.expect("table");
        // Every round but the last rolls back, so the unit starts in hz each time.
        let (from, to) = ("hz", "sh");
        assert_eq!(unit_placement(&before.table, "u01").0, from);
        // A gateway that applies only what the test says: it holds the flip at each step.
        report(&gateway, before.version).await;
        let request = FlipRequest {
            to: to.to_owned(),
            mode: FlipMode::Planned,
            reason: format!("round {round}"),
            replication_check: Some(ReplicationCheck {
                confirm: Some(true),
                ..Default::default()
            }),
            converge_timeout_s: Some(60),
        };
        let accepted = operator
            .start_flip("u01", &request)
            .await
            .expect("flip accepted");
        let id = accepted.id;
        let mut at = flip_until(
            &operator,
            &id,
            "converge_freeze",
            waiting_at(StepName::ConvergeFreeze),
        )
        .await;
        if kill_at != StepName::ConvergeFreeze {
            report(&gateway, before.version + 1).await;
            at = flip_until(
                &operator,
                &id,
                "replication",
                waiting_at(StepName::Replication),
            )
            .await;
        }
        if matches!(
            kill_at,
            StepName::ConvergeSwitch | StepName::ConvergeUnfreeze
        ) {
            operator.confirm_flip(&id).await.expect("confirmed");
            at = flip_until(
                &operator,
                &id,
                "converge_switch",
                waiting_at(StepName::ConvergeSwitch),
            )
            .await;
        }
        if kill_at == StepName::ConvergeUnfreeze {
            report(&gateway, before.version + 2).await;
            at = flip_until(
                &operator,
                &id,
                "converge_unfreeze",
                waiting_at(StepName::ConvergeUnfreeze),
            )
            .await;
        }
        assert!(waiting_at(kill_at)(&at), "{at:?}");
        let versions_before = versions(&operator).await;
        let audit_before = operator.audit(None).await.expect("audit");

        cp.kill9();
        cp = ControlProcess::start(&config);
        let operator = cp.client(&tokens.operator);

        // Nothing acknowledged is lost.
        let versions_after = versions(&operator).await;
        assert_eq!(
            versions_after[..versions_before.len()],
            versions_before[..],
            "round {round}"
        );
        let audit_after = operator.audit(None).await.expect("audit");
        assert_eq!(
            audit_after[..audit_before.len()],
            audit_before[..],
            "round {round}"
        );
        // The flip ends, and the table is consistent with how it ended.
        follow_rollback(&operator, &cp.client(tokens.gateway("hz")), &id).await;
        let flip = flip_until(&operator, &id, "recovered", |f| f.state.is_final()).await;
        assert_eq!(flip.state, ending, "round {round}: {flip:?}");
        assert!(
            flip.error
                .as_deref()
                .unwrap_or_default()
                .contains("stopped during step"),
            "{flip:?}"
        );
        let now = operator.table().await.expect("table");
        let expected = match ending {
            FlipState::Succeeded => (to.to_owned(), "active".to_owned()),
            _ => (from.to_owned(), "active".to_owned()),
        };
        assert_eq!(unit_placement(&now.table, "u01"), expected, "round {round}");
        if ending == FlipState::RolledBack {
            assert_eq!(
                flip.steps
                    .iter()
                    .filter(|s| s.name == StepName::Rollback)
                    .count(),
                1,
                "{flip:?}"
            );
        }
        // Its end is audited.
        audit_after_end(&operator, &id).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_evacuation_ends_every_unit_the_same_way() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = Tokens::new();
    let config = file_plane_config(dir.path(), &tokens);
    let mut cp = ControlProcess::start(&config);
    // sz holds u05 and u06 (standby hz). Killed with both frozen in sz, then with both
    // switched to hz and still frozen: each time both go back to sz together.
    for (round, kill_at) in [StepName::Replication, StepName::ConvergeSwitch]
        .into_iter()
        .enumerate()
    {
        let operator = cp.client(&tokens.operator);
        let gateway = cp.client(tokens.gateway("hz"));
        let before = operator.table().await.expect("table");
        report(&gateway, before.version).await;
        let request = control_api::EvacuateRequest {
            mode: FlipMode::Planned,
            to: None,
            reason: format!("round {round}"),
            replication_check: Some(ReplicationCheck {
                confirm: Some(true),
                ..Default::default()
            }),
            converge_timeout_s: Some(60),
        };
        let id = operator
            .evacuate("sz", &request)
            .await
            .expect("evacuation accepted")
            .id;
        flip_until(
            &operator,
            &id,
            "converge_freeze",
            waiting_at(StepName::ConvergeFreeze),
        )
        .await;
        report(&gateway, before.version + 1).await;
        let mut at = flip_until(
            &operator,
            &id,
            "replication",
            waiting_at(StepName::Replication),
        )
        .await;
        if kill_at == StepName::ConvergeSwitch {
            operator.confirm_flip(&id).await.expect("confirmed");
            at = flip_until(
                &operator,
                &id,
                "converge_switch",
                waiting_at(StepName::ConvergeSwitch),
            )
            .await;
            let switched = operator.table().await.expect("table");
            for unit in ["u05", "u06"] {
                assert_eq!(
                    unit_placement(&switched.table, unit),
                    ("hz".to_owned(), "write_frozen".to_owned())
                );
            }
        }
        assert!(waiting_at(kill_at)(&at), "{at:?}");

        cp.kill9();
        cp = ControlProcess::start(&config);
        let operator = cp.client(&tokens.operator);
        follow_rollback(&operator, &cp.client(tokens.gateway("hz")), &id).await;
        let flip = flip_until(&operator, &id, "recovered", |f| f.state.is_final()).await;
        assert_eq!(flip.state, FlipState::RolledBack, "round {round}: {flip:?}");
        assert_eq!(
            flip.steps
                .iter()
                .filter(|s| s.name == StepName::Rollback)
                .count(),
            1,
            "one rollback version for both units: {flip:?}"
        );
        let now = operator.table().await.expect("table");
        for unit in ["u05", "u06"] {
            assert_eq!(
                unit_placement(&now.table, unit),
                ("sz".to_owned(), "active".to_owned()),
                "round {round}: {unit}"
            );
        }
        audit_after_end(&operator, &id).await;
    }
}
