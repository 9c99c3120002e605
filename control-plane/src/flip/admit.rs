//! Flip admission: whether a flip may start (a known unit, another region of the table, a
//! reason, a valid replication check, a switched table that validates, no other flip or
//! lock on the unit), its record and audit entry, and the operator's signals to a running
//! flip.

use std::sync::Arc;

use control_api::{AuditEntry, AuditOutcome, FlipMode, FlipRecord, FlipRequest, FlipState, now_ms};
use router_rules::UnitState;

use crate::ControlPlane;
use crate::refused::{Kind, Refused};
use crate::store::FlipSignal;

/// Start a flip of `unit` as `ask` says, on behalf of `actor`: checked, recorded, audited and
/// running when this returns the record.
pub async fn start(
    cp: &Arc<ControlPlane>,
    actor: &str,
    unit: &str,
    ask: FlipRequest,
) -> Result<FlipRecord, Refused> {
    let current = cp
        .store
        .current()
        .ok_or_else(|| Refused::new(Kind::Conflict, "no_table", "no table stored yet"))?;
    let table = &current.table;
    let Some(placed) = table.units.iter().find(|u| u.name == unit) else {
        let known: Vec<&str> = table.units.iter().map(|u| u.name.as_str()).collect();
        return Err(Refused::new(
            Kind::NotFound,
            "unknown_unit",
            format!(
                "unit {unit:?} is not in the table (units: {})",
                known.join(", ")
            ),
        ));
    };
    let invalid = |m: String| Refused::new(Kind::Unprocessable, "invalid_flip", m);
    if !table.regions.iter().any(|r| r.name == ask.to) {
        let known: Vec<&str> = table.regions.iter().map(|r| r.name.as_str()).collect();
        return Err(invalid(format!(
            "body.to: region {:?} is not in the table (regions: {})",
            ask.to,
            known.join(", ")
        )));
    }
    if placed.region == ask.to {
        return Err(invalid(format!(
            "body.to: unit {unit} is already in region {}",
            ask.to
        )));
    }
    if ask.reason.trim().is_empty() {
        return Err(invalid(
            "body.reason: say why (it goes to the audit log)".into(),
        ));
    }
    match (&ask.replication_check, ask.mode) {
        (Some(_), FlipMode::Emergency) => {
            return Err(invalid(
                "body.replication_check: emergency flips do not wait for replication; drop it or use mode planned".into(),
            ));
        }
        (Some(check), FlipMode::Planned) => {
            super::check_replication(check).map_err(|m| invalid(format!("body.{m}")))?;
        }
        (None, _) => {}
    }
    // Refuse now what a step would refuse later: the switched table must be valid.
    super::with_placement(table, unit, &ask.to, UnitState::Active, current.version + 1)
        .map_err(|m| invalid(format!("body.to: {m}")))?;
    if ask.converge_timeout_s == Some(0) {
        return Err(invalid(
            "body.converge_timeout_s: must be at least 1".into(),
        ));
    }
    let id = super::new_id();
    let Some(lock) = cp.store.lock_unit(unit, &id).await? else {
        if let Some(block) = cp.store.unit_block(unit).await? {
            return Err(Refused::new(
                Kind::Conflict,
                "unit_locked",
                block.describe(),
            ));
        }
        let running = cp
            .store
            .flips()
            .await
            .ok()
            .and_then(|f| {
                f.into_iter()
                    .rev()
                    .find(|f| f.unit == unit && f.state == FlipState::Running)
            })
            .map_or_else(String::new, |f| format!(" ({})", f.id));
        return Err(Refused::new(
            Kind::Conflict,
            "flip_in_progress",
            format!(
                "a flip of unit {unit} is already running{running}; one flip per unit at a time"
            ),
        ));
    };
    let record = FlipRecord {
        id: id.clone(),
        unit: unit.to_owned(),
        from: placed.region.clone(),
        to: ask.to.clone(),
        mode: ask.mode,
        reason: ask.reason.clone(),
        actor: actor.to_owned(),
        replication_check: ask.replication_check.clone(),
        converge_timeout_s: ask
            .converge_timeout_s
            .unwrap_or(super::DEFAULT_CONVERGE_TIMEOUT_S),
        pre_flip_version: current.version,
        state: FlipState::Running,
        owner: cp.replica.clone(),
        created_at_ms: now_ms(),
        finished_at_ms: None,
        confirmed: false,
        cancel_requested: false,
        error: None,
        steps: Vec::new(),
    };
    cp.store.put_flip(&record).await?;
    cp.audit(AuditEntry {
        at_ms: record.created_at_ms,
        actor: actor.to_owned(),
        action: "flip.start".into(),
        target: unit.to_owned(),
        outcome: AuditOutcome::Ok,
        status: Some(202),
        version_before: Some(current.version),
        version_after: None,
        reason: Some(ask.reason.clone()),
        flip: Some(id),
        detail: Some(format!(
            "{:?} flip {} -> {}",
            ask.mode, record.from, record.to
        )),
    })
    .await;
    tokio::spawn(super::run(cp.clone(), record.clone(), lock));
    Ok(record)
}

/// The flip `id`.
pub async fn find(cp: &ControlPlane, id: &str) -> Result<FlipRecord, Refused> {
    cp.store
        .flip(id)
        .await?
        .ok_or_else(|| Refused::new(Kind::NotFound, "unknown_flip", format!("no flip {id:?}")))
}

/// Pass an operator's `signal` to the running flip `id`.
pub async fn signal(cp: &ControlPlane, id: &str, signal: FlipSignal) -> Result<(), Refused> {
    let flip = find(cp, id).await?;
    if flip.state.is_final() {
        return Err(Refused::new(
            Kind::Conflict,
            "flip_ended",
            format!("flip {id} already ended ({:?})", flip.state),
        ));
    }
    if signal == FlipSignal::Confirm
        && flip
            .replication_check
            .as_ref()
            .is_none_or(|c| c.confirm != Some(true))
    {
        return Err(Refused::new(
            Kind::Conflict,
            "no_confirmation_expected",
            format!("flip {id} does not wait for a confirmation"),
        ));
    }
    cp.store.signal_flip(id, signal).await?;
    cp.wake_flip(id);
    Ok(())
}
