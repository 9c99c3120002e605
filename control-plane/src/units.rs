//! Settling a unit by hand: after a flip that could not be recovered (its record unreadable,
//! the unit blocked), an operator sets the unit's state in the region it is in and lifts its
//! block. The unit's lock is held meanwhile, so no flip starts half-way through.

use control_api::{AuditEntry, AuditOutcome, ResolveRequest, ResolveResult, StoredTable, now_ms};

use crate::ControlPlane;
use crate::flip;
use crate::refused::{Kind, Refused};
use crate::store::PutOutcome;

/// Settle `unit` as `ask` says, on behalf of `actor`.
pub async fn resolve(
    cp: &ControlPlane,
    actor: &str,
    unit: &str,
    ask: ResolveRequest,
) -> Result<ResolveResult, Refused> {
    if ask.reason.trim().is_empty() {
        return Err(Refused::new(
            Kind::Unprocessable,
            "invalid_body",
            "body.reason: say why (it goes to the audit log)",
        ));
    }
    let current = cp
        .store
        .current()
        .ok_or_else(|| Refused::new(Kind::Conflict, "no_table", "no table stored yet"))?;
    let Some(placed) = current.table.units.iter().find(|u| u.name == unit) else {
        return Err(Refused::new(
            Kind::NotFound,
            "unknown_unit",
            format!("unit {unit:?} is not in the table"),
        ));
    };
    let block = cp.store.unit_block(unit).await?;
    let holder = format!("resolve-{}", flip::new_id());
    if let Some(block) = &block {
        cp.store.lift_block(&block.unit).await?;
    }
    let Some(lock) = cp.store.lock_unit(unit, &holder).await? else {
        return Err(Refused::new(
            Kind::Conflict,
            "flip_in_progress",
            format!(
                "a flip of unit {unit} is running; cancel it instead (POST /v1/flips/{{id}}/cancel)"
            ),
        ));
    };
    let lifted = block.as_ref().map(|b| b.flip.clone());
    let changes = placed.state != ask.state;
    let mut audit = AuditEntry {
        at_ms: now_ms(),
        actor: actor.to_owned(),
        action: "unit.resolve".into(),
        target: unit.to_owned(),
        outcome: AuditOutcome::Ok,
        status: Some(200),
        version_before: Some(current.version),
        version_after: None,
        reason: Some(ask.reason.clone()),
        flip: lifted.clone(),
        detail: Some(format!(
            "unit {unit} {} {} in {}{}",
            if changes { "set" } else { "already" },
            ask.state.as_str(),
            placed.region,
            lifted
                .as_ref()
                .map(|f| format!("; lock of lost flip {f} lifted"))
                .unwrap_or_default()
        )),
    };
    let mut version = current.version;
    if changes {
        let table = flip::with_placement(
            &current.table,
            unit,
            &placed.region,
            ask.state,
            current.version + 1,
        )
        .map_err(|m| Refused::new(Kind::Unprocessable, "invalid_table", m))?;
        let stored = StoredTable::new(table, actor, Some(ask.reason.clone()), None);
        audit.at_ms = stored.stored_at_ms;
        audit.version_after = Some(stored.version);
        match cp
            .write_version(
                current.version,
                stored,
                audit,
                &Vec::from_iter(lock.fence()),
            )
            .await?
        {
            PutOutcome::Stored(v) => version = v,
            PutOutcome::Stale(_) | PutOutcome::LockLost => {
                return Err(Refused::new(
                    Kind::Conflict,
                    "stale_version",
                    "the table changed meanwhile; resolve again",
                ));
            }
        }
    } else {
        cp.audit(audit).await;
    }
    drop(lock);
    Ok(ResolveResult {
        unit: unit.to_owned(),
        version,
        lifted,
    })
}
