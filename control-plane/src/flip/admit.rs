//! Flip admission: whether a flip may start (a known unit, another region of the table, a
//! reason, a valid replication check, a switched table that validates, no other flip or
//! lock on the unit), its record and audit entry, and the operator's signals to a running
//! flip.

use std::sync::Arc;

use control_api::{
    AuditEntry, AuditOutcome, EvacuateRequest, FlipMode, FlipRecord, FlipRequest, FlipState,
    FlipUnit, MultiFlipRequest, ReplicationCheck, RestoreRequest, now_ms,
};
use router_rules::UnitState;

use crate::ControlPlane;
use crate::refused::{Kind, Refused};
use crate::store::FlipSignal;

/// How a flip runs, whatever it moves.
pub struct FlipOptions {
    /// `planned` or `emergency`.
    pub mode: FlipMode,
    /// Why.
    pub reason: String,
    /// Planned flips: how to know the data caught up.
    pub replication_check: Option<ReplicationCheck>,
    /// Per convergence step.
    pub converge_timeout_s: Option<u64>,
}

/// Start a flip of `unit` as `ask` says, on behalf of `actor`: checked, recorded, audited and
/// running when this returns the record.
pub async fn start(
    cp: &Arc<ControlPlane>,
    actor: &str,
    unit: &str,
    ask: FlipRequest,
) -> Result<FlipRecord, Refused> {
    let options = FlipOptions {
        mode: ask.mode,
        reason: ask.reason,
        replication_check: ask.replication_check,
        converge_timeout_s: ask.converge_timeout_s,
    };
    start_moves(cp, actor, &[(unit.to_owned(), ask.to)], options, None).await
}

/// Start one flip of several units (`POST /v1/flips`).
pub async fn start_many(
    cp: &Arc<ControlPlane>,
    actor: &str,
    ask: MultiFlipRequest,
) -> Result<FlipRecord, Refused> {
    let invalid = |m: String| Refused::new(Kind::Unprocessable, "invalid_flip", m);
    if ask.units.is_empty() {
        return Err(invalid("body.units: name at least one unit".into()));
    }
    if ask.units.len() > router_rules::validate::MAX_UNITS {
        return Err(invalid(format!(
            "body.units: {} units; at most {}",
            ask.units.len(),
            router_rules::validate::MAX_UNITS
        )));
    }
    let moves: Vec<(String, String)> = match (&ask.to, ask.placement.is_empty()) {
        (Some(to), true) => ask.units.iter().map(|u| (u.clone(), to.clone())).collect(),
        (None, false) => {
            let mut moves = Vec::new();
            for unit in &ask.units {
                let to = ask
                    .placement
                    .get(unit)
                    .ok_or_else(|| invalid(format!("body.placement: no region for unit {unit}")))?;
                moves.push((unit.clone(), to.clone()));
            }
            if let Some(extra) = ask.placement.keys().find(|u| !ask.units.contains(u)) {
                return Err(invalid(format!(
                    "body.placement.{extra}: not one of body.units"
                )));
            }
            moves
        }
        _ => {
            return Err(invalid(
                "body: give either to (one region for every unit) or placement (a region per unit)"
                    .into(),
            ));
        }
    };
    let options = FlipOptions {
        mode: ask.mode,
        reason: ask.reason,
        replication_check: ask.replication_check,
        converge_timeout_s: ask.converge_timeout_s,
    };
    start_moves(cp, actor, &moves, options, None).await
}

/// Evacuate `region`: every unit living there moves to `ask.to`, or to its standby region.
pub async fn evacuate(
    cp: &Arc<ControlPlane>,
    actor: &str,
    region: &str,
    ask: EvacuateRequest,
) -> Result<FlipRecord, Refused> {
    let current = cp
        .store
        .current()
        .ok_or_else(|| Refused::new(Kind::Conflict, "no_table", "no table stored yet"))?;
    let table = &current.table;
    if !table.regions.iter().any(|r| r.name == region) {
        let known: Vec<&str> = table.regions.iter().map(|r| r.name.as_str()).collect();
        return Err(Refused::new(
            Kind::NotFound,
            "unknown_region",
            format!(
                "region {region:?} is not in the table (regions: {})",
                known.join(", ")
            ),
        ));
    }
    let invalid = |m: String| Refused::new(Kind::Unprocessable, "invalid_evacuation", m);
    if ask.to.as_deref() == Some(region) {
        return Err(invalid(format!(
            "body.to: {region} is the region being evacuated"
        )));
    }
    let leaving: Vec<&router_rules::raw::RawUnit> =
        table.units.iter().filter(|u| u.region == region).collect();
    let spread = spread_by_capacity(table, region, &leaving);
    let mut moves = Vec::new();
    for unit in leaving {
        let to = match (&ask.to, spread.get(&unit.name), &unit.standby) {
            (Some(to), _, _) => to.clone(),
            (None, Some(to), _) => to.clone(),
            (None, None, Some(standby)) if standby != region => standby.clone(),
            _ => {
                return Err(invalid(format!(
                    "unit {} has no standby region to go to; give body.to",
                    unit.name
                )));
            }
        };
        moves.push((unit.name.clone(), to));
    }
    if moves.is_empty() {
        return Err(Refused::new(
            Kind::Conflict,
            "nothing_to_move",
            format!("no unit lives in region {region}"),
        ));
    }
    let options = FlipOptions {
        mode: ask.mode,
        reason: ask.reason,
        replication_check: ask.replication_check,
        converge_timeout_s: ask.converge_timeout_s,
    };
    start_moves(
        cp,
        actor,
        &moves,
        options,
        Some(format!("evacuate:{region}")),
    )
    .await
}

/// Where each unit of `leaving` goes when the table gives the other regions a `capacity`:
/// largest unit first, each to the region whose share of the evacuated slots, divided by its
/// capacity, stays lowest (ties by name). Empty when no other region has a capacity.
fn spread_by_capacity(
    table: &router_rules::RawTable,
    region: &str,
    leaving: &[&router_rules::raw::RawUnit],
) -> std::collections::BTreeMap<String, String> {
    let slots = |u: &router_rules::raw::RawUnit| -> u64 {
        u.slots
            .iter()
            .map(|[a, b]| u64::from(b.saturating_sub(*a)) + 1)
            .sum()
    };
    let mut takers: Vec<(&str, u64, u64)> = table
        .regions
        .iter()
        .filter(|r| r.name != region)
        .filter_map(|r| Some((r.name.as_str(), u64::from(r.capacity?), 0)))
        .collect();
    let mut placed = std::collections::BTreeMap::new();
    if takers.is_empty() {
        return placed;
    }
    let mut units = leaving.to_vec();
    units.sort_by(|a, b| slots(b).cmp(&slots(a)).then(a.name.cmp(&b.name)));
    for unit in units {
        let size = slots(unit);
        // Lowest (taken + size) / capacity, compared without division.
        let Some(best) = (0..takers.len()).min_by(|&i, &j| {
            let (_, ci, ti) = takers[i];
            let (_, cj, tj) = takers[j];
            ((ti + size) * cj)
                .cmp(&((tj + size) * ci))
                .then(takers[i].0.cmp(takers[j].0))
        }) else {
            break;
        };
        takers[best].2 += size;
        placed.insert(unit.name.clone(), takers[best].0.to_owned());
    }
    placed
}

/// Restore `region`: the units its last successful evacuation moved, and that are still
/// where it put them, go back (a planned flip).
pub async fn restore(
    cp: &Arc<ControlPlane>,
    actor: &str,
    region: &str,
    ask: RestoreRequest,
) -> Result<FlipRecord, Refused> {
    let evacuation = format!("evacuate:{region}");
    let flips = cp.store.flips().await?;
    let Some(last) = flips.iter().rev().find(|f| {
        f.operation.as_deref() == Some(evacuation.as_str()) && f.state == FlipState::Succeeded
    }) else {
        return Err(Refused::new(
            Kind::Conflict,
            "nothing_to_restore",
            format!("region {region} has no evacuation to undo"),
        ));
    };
    let current = cp
        .store
        .current()
        .ok_or_else(|| Refused::new(Kind::Conflict, "no_table", "no table stored yet"))?;
    let moves: Vec<(String, String)> = last
        .moves()
        .into_iter()
        .filter(|m| {
            current
                .table
                .units
                .iter()
                .any(|u| u.name == m.unit && u.region == m.to)
        })
        .map(|m| (m.unit, m.from))
        .collect();
    if moves.is_empty() {
        return Err(Refused::new(
            Kind::Conflict,
            "nothing_to_restore",
            format!(
                "no unit that evacuation {} moved is still where it put it",
                last.id
            ),
        ));
    }
    let options = FlipOptions {
        mode: FlipMode::Planned,
        reason: ask.reason,
        replication_check: ask.replication_check,
        converge_timeout_s: ask.converge_timeout_s,
    };
    start_moves(
        cp,
        actor,
        &moves,
        options,
        Some(format!("restore:{region}")),
    )
    .await
}

/// Start one flip moving each `(unit, to)` of `moves`: checked, recorded, audited and running
/// when this returns the record. One move is a flip of one unit (its record names it alone).
async fn start_moves(
    cp: &Arc<ControlPlane>,
    actor: &str,
    moves: &[(String, String)],
    options: FlipOptions,
    operation: Option<String>,
) -> Result<FlipRecord, Refused> {
    let current = cp
        .store
        .current()
        .ok_or_else(|| Refused::new(Kind::Conflict, "no_table", "no table stored yet"))?;
    let table = &current.table;
    let invalid = |m: String| Refused::new(Kind::Unprocessable, "invalid_flip", m);
    let single = moves.len() == 1;
    let mut units = Vec::with_capacity(moves.len());
    for (i, (unit, to)) in moves.iter().enumerate() {
        let at = if single {
            "body.to".to_owned()
        } else {
            format!("body.units[{i}]")
        };
        let Some(placed) = table.units.iter().find(|u| &u.name == unit) else {
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
        if moves[..i].iter().any(|(u, _)| u == unit) {
            return Err(invalid(format!("{at}: unit {unit} is named twice")));
        }
        if !table.regions.iter().any(|r| &r.name == to) {
            let known: Vec<&str> = table.regions.iter().map(|r| r.name.as_str()).collect();
            return Err(invalid(format!(
                "{at}: region {to:?} is not in the table (regions: {})",
                known.join(", ")
            )));
        }
        if &placed.region == to {
            return Err(invalid(format!(
                "{at}: unit {unit} is already in region {to}"
            )));
        }
        units.push(FlipUnit {
            unit: unit.clone(),
            from: placed.region.clone(),
            to: to.clone(),
        });
    }
    if options.reason.trim().is_empty() {
        return Err(invalid(
            "body.reason: say why (it goes to the audit log)".into(),
        ));
    }
    match (&options.replication_check, options.mode) {
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
    let targets: Vec<(&str, &str, UnitState)> = units
        .iter()
        .map(|u| (u.unit.as_str(), u.to.as_str(), UnitState::Active))
        .collect();
    super::with_placements(table, &targets, current.version + 1).map_err(|m| {
        invalid(if single {
            format!("body.to: {m}")
        } else {
            format!("body: {m}")
        })
    })?;
    if options.converge_timeout_s == Some(0) {
        return Err(invalid(
            "body.converge_timeout_s: must be at least 1".into(),
        ));
    }
    let id = super::new_id();
    let names: Vec<String> = units.iter().map(|u| u.unit.clone()).collect();
    // A flip that just ended keeps its locks for the moment it takes to audit its end: an
    // operator who saw it end and starts the next one at once waits for that, not a 409.
    let mut attempts = 0;
    let locks = loop {
        match cp.store.lock_units(&names, &id).await? {
            Ok(locks) => break locks,
            Err(unit) => match locked(cp, &unit).await? {
                Some(refused) => return Err(refused),
                None if attempts < 40 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
                None => {
                    return Err(Refused::new(
                        Kind::Conflict,
                        "flip_in_progress",
                        format!("unit {unit} is still held by a flip that is ending; retry"),
                    ));
                }
            },
        }
    };
    let joined = |f: fn(&FlipUnit) -> &str| {
        let mut seen: Vec<&str> = Vec::new();
        for u in &units {
            if !seen.contains(&f(u)) {
                seen.push(f(u));
            }
        }
        seen.join(",")
    };
    let record = FlipRecord {
        id: id.clone(),
        unit: joined(|u| &u.unit),
        from: joined(|u| &u.from),
        to: joined(|u| &u.to),
        mode: options.mode,
        reason: options.reason.clone(),
        actor: actor.to_owned(),
        replication_check: options.replication_check.clone(),
        converge_timeout_s: options
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
        confirm_by_ms: None,
        units: if single { Vec::new() } else { units.clone() },
        operation: operation.clone(),
    };
    cp.store.put_flip(&record).await?;
    let what = units
        .iter()
        .map(|u| format!("{} {} -> {}", u.unit, u.from, u.to))
        .collect::<Vec<_>>()
        .join(", ");
    cp.audit(AuditEntry {
        at_ms: record.created_at_ms,
        actor: actor.to_owned(),
        action: "flip.start".into(),
        target: record.unit.clone(),
        outcome: AuditOutcome::Ok,
        status: Some(202),
        version_before: Some(current.version),
        version_after: None,
        reason: Some(options.reason),
        flip: Some(id),
        detail: Some(match &operation {
            Some(operation) => format!("{:?} {operation}: {what}", options.mode),
            None => format!("{:?} flip {what}", options.mode),
        }),
    })
    .await;
    super::start(cp.clone(), record.clone(), locks);
    Ok(record)
}

/// Why `unit`'s lock is taken: a block an operator must resolve, or the running flip that
/// holds it; `None` when no flip holding it is running any more (it is letting go).
async fn locked(cp: &ControlPlane, unit: &str) -> Result<Option<Refused>, Refused> {
    if let Some(block) = cp.store.unit_block(unit).await? {
        return Ok(Some(Refused::new(
            Kind::Conflict,
            "unit_locked",
            block.describe(),
        )));
    }
    let running = cp
        .store
        .flips()
        .await?
        .into_iter()
        .rev()
        .find(|f| f.moves_unit(unit) && f.state == FlipState::Running);
    Ok(running.map(|f| {
        Refused::new(
            Kind::Conflict,
            "flip_in_progress",
            format!(
                "a flip of unit {unit} is already running ({}); one flip per unit at a time",
                f.id
            ),
        )
    }))
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
    if matches!(signal, FlipSignal::Confirm | FlipSignal::Extend(_))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_evacuation_spreads_by_capacity_largest_unit_first() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../bench/five-regions-100-units.yaml"
        ))
        .expect("bench table");
        let (mut table, _) = router_rules::parse_yaml(&text).expect("parses");
        let evacuated = table.regions[0].name.clone();
        let leaving: Vec<router_rules::raw::RawUnit> = table
            .units
            .iter()
            .filter(|u| u.region == evacuated)
            .cloned()
            .collect();
        let refs: Vec<&router_rules::raw::RawUnit> = leaving.iter().collect();
        // No capacities: each unit goes to its standby (nothing spread).
        assert!(spread_by_capacity(&table, &evacuated, &refs).is_empty());
        // Capacities 3 and 1 on two other regions, none on the rest: 3/4 and 1/4 of the
        // units (all of one size here), and nothing to the others.
        let (big, small) = (table.regions[1].name.clone(), table.regions[2].name.clone());
        table.regions[1].capacity = Some(3);
        table.regions[2].capacity = Some(1);
        let spread = spread_by_capacity(&table, &evacuated, &refs);
        assert_eq!(spread.len(), leaving.len());
        let to = |r: &str| spread.values().filter(|v| v.as_str() == r).count();
        assert_eq!((to(&big), to(&small)), (15, 5), "{spread:?}");
    }
}
