//! Table admission: whether a proposed table may become the next version, what it would
//! change (the plan), and storing it with its audit entry.
//!
//! A table must be valid, a successor of the version in force, and based on it (`If-Match`).
//! It must also not move units: moving a unit to another region, or slots between units,
//! moves users' writes. A flip does that safely (freeze, wait for the data, switch, unfreeze);
//! a table write would switch at once, in every gateway, with no freeze and no way back. So a
//! table write that moves units is refused unless an admin forces it, and the plan says so
//! beforehand.

use std::sync::Arc;

use bytes::Bytes;
use control_api::{ApiProblem, AuditEntry, AuditOutcome, PlanResult, StoredTable, UnitMove};
use router_rules::{CompiledTable, RawTable, SourceMap};

use crate::ControlPlane;
use crate::refused::{Kind, Refused, off_thread};
use crate::store::PutOutcome;

/// A proposed table as it came: its text and whether it is JSON (YAML otherwise).
pub struct Proposal {
    /// The body.
    pub body: Bytes,
    /// JSON (`Content-Type: application/json`), else YAML.
    pub json: bool,
}

impl Proposal {
    /// Parse it, renumber it as `version` and validate it against `current`.
    fn table(
        &self,
        version: u64,
        current: Option<&StoredTable>,
    ) -> Result<CompiledTable, router_rules::TableError> {
        let text = std::str::from_utf8(&self.body).map_err(|e| {
            router_rules::TableError::single(router_rules::Problem::at(
                "",
                format!("the body is not UTF-8: {e}"),
            ))
        })?;
        let (mut raw, source): (RawTable, Option<SourceMap>) = if self.json {
            (router_rules::parse_json(text)?, None)
        } else {
            let (raw, source) = router_rules::parse_yaml(text)?;
            (raw, Some(source))
        };
        // The store numbers versions; whatever the body says is replaced.
        raw.version = version;
        let table = router_rules::validate(raw, source.as_ref())?;
        if let Some(current) = current {
            let current = router_rules::validate(current.table.clone(), None)?;
            router_rules::check_successor(&current, &table)?;
        }
        Ok(table)
    }
}

/// What `proposal` would change if stored after `current`: its problems, or the diff and the
/// units it moves. Stores nothing.
pub async fn plan(cp: &ControlPlane, proposal: Proposal) -> Result<PlanResult, Refused> {
    let current = cp.store.current();
    let flipping = flipping_units(cp).await?;
    if proposal.body.trim_ascii().is_empty() {
        return Err(Refused::new(
            Kind::BadRequest,
            "empty_body",
            "the request body is empty: send the proposed table (YAML, or JSON with Content-Type: application/json)",
        ));
    }
    off_thread(move || plan_now(&proposal, current, &flipping)).await?
}

fn plan_now(
    proposal: &Proposal,
    current: Option<Arc<StoredTable>>,
    flipping: &[(String, String)],
) -> Result<PlanResult, Refused> {
    let current_version = current.as_ref().map_or(0, |c| c.version);
    let next_version = current_version + 1;
    let table = match proposal.table(next_version, current.as_deref()) {
        Ok(table) => table,
        Err(error) => {
            return Ok(PlanResult {
                valid: false,
                current_version,
                next_version,
                problems: error.problems.iter().map(ApiProblem::from).collect(),
                moves: Vec::new(),
                put_refused: None,
                diff: None,
            });
        }
    };
    let diff = match &current {
        Some(current) => {
            let old = router_rules::validate(current.table.clone(), None).map_err(|e| {
                Refused::table(
                    Kind::Internal,
                    "stored_table_invalid",
                    "the stored table",
                    &e,
                )
            })?;
            serde_json::to_value(router_rules::diff(&old, &table)).ok()
        }
        None => None,
    };
    let moves = current
        .as_ref()
        .map(|c| unit_moves(&c.table, table.raw()))
        .unwrap_or_default();
    let in_flip = current
        .as_ref()
        .and_then(|c| changes_flipping_unit(&c.table, table.raw(), flipping));
    Ok(PlanResult {
        valid: true,
        current_version,
        next_version,
        problems: Vec::new(),
        put_refused: in_flip.or_else(|| (!moves.is_empty()).then(|| refusal(&moves))),
        moves,
        diff,
    })
}

/// Every unit a flip is running on, with the flip's id.
async fn flipping_units(cp: &ControlPlane) -> Result<Vec<(String, String)>, Refused> {
    Ok(cp
        .store
        .flips()
        .await?
        .into_iter()
        .filter(|f| !f.state.is_final())
        .flat_map(|f| {
            let id = f.id.clone();
            f.moves().into_iter().map(move |m| (m.unit, id.clone()))
        })
        .collect())
}

/// Why `next` may not follow `current` while the flips in `flipping` run: it changes the
/// region, state or slots of one of their units. A flip owns those until it ends (its freeze
/// keeps the unit's writes out while the data catches up; a table write that unfroze it
/// would let them in behind the flip's back).
fn changes_flipping_unit(
    current: &RawTable,
    next: &RawTable,
    flipping: &[(String, String)],
) -> Option<String> {
    flipping.iter().find_map(|(unit, flip)| {
        let before = current.units.iter().find(|u| &u.name == unit);
        let after = next.units.iter().find(|u| &u.name == unit);
        let same = match (before, after) {
            (Some(b), Some(a)) => b.region == a.region && b.state == a.state && b.slots == a.slots,
            (None, None) => true,
            _ => false,
        };
        (!same).then(|| {
            format!(
                "unit {unit} has flip {flip} running: a table write may not change its region, state or slots until the flip ends (wait for it, or cancel it: unitctl flip-cancel {flip})"
            )
        })
    })
}

/// A table write: the proposal, the version it was based on, who and why.
pub struct TableWrite {
    /// The table.
    pub proposal: Proposal,
    /// The version the writer saw in force (`If-Match`; 0 for the first table).
    pub expected: u64,
    /// Who writes it.
    pub actor: String,
    /// Why (`X-Unitgate-Reason`).
    pub reason: Option<String>,
    /// An admin's reason to store it although it moves units (`X-Unitgate-Force`).
    pub forced: Option<String>,
}

/// Store `write` as the next version, with its audit entry, and return the version. Refused
/// when it is stale, invalid, or moves units without being forced.
pub async fn write(cp: &ControlPlane, write: TableWrite) -> Result<u64, Refused> {
    let TableWrite {
        proposal,
        expected,
        actor,
        reason,
        forced,
    } = write;
    if forced.as_deref() == Some("") {
        return Err(Refused::new(
            Kind::BadRequest,
            "bad_force",
            format!(
                "{}: give the reason for moving units without a flip",
                control_api::FORCE_HEADER
            ),
        ));
    }
    let current = cp.store.current();
    let current_version = current.as_ref().map_or(0, |c| c.version);
    let stale = |now: u64| {
        Refused::new(
            Kind::Conflict,
            "stale_version",
            format!(
                "If-Match: {expected}, but the version in force is {now}: the table was changed since yours was fetched; fetch it again (unitctl table get), redo the edit and retry"
            ),
        )
    };
    // This replica's copy of the version in force may lag behind the store's (etcd), never
    // lead it: an older If-Match is stale for sure; a newer one is for the store's
    // compare-and-swap to judge.
    if expected < current_version {
        return Err(stale(current_version));
    }
    let basis = current.clone();
    let table = off_thread(move || proposal.table(expected + 1, basis.as_deref()))
        .await?
        .map_err(|e| {
            Refused::table(
                Kind::Unprocessable,
                "invalid_table",
                "the table was refused",
                &e,
            )
        })?;
    if let Some(current) = &current {
        let flipping = flipping_units(cp).await?;
        if let Some(why) = changes_flipping_unit(&current.table, table.raw(), &flipping) {
            return Err(Refused::new(Kind::Conflict, "unit_flipping", why));
        }
    }
    let moves = current
        .as_ref()
        .map(|c| unit_moves(&c.table, table.raw()))
        .unwrap_or_default();
    if !moves.is_empty() && forced.is_none() {
        return Err(Refused::new(
            Kind::Unprocessable,
            "moves_units",
            refusal(&moves),
        ));
    }
    let mut stored = StoredTable::new(table.raw().clone(), &actor, reason.clone(), None);
    let mut detail = None;
    if let Some(why) = &forced
        && !moves.is_empty()
    {
        stored.forced = Some(why.clone());
        detail = Some(format!(
            "forced: moves units without a flip ({}): {why}",
            summary(&moves)
        ));
    }
    let audit = AuditEntry {
        at_ms: stored.stored_at_ms,
        actor,
        action: if detail.is_some() {
            "table.put.forced".into()
        } else {
            "table.put".into()
        },
        target: "table".into(),
        outcome: AuditOutcome::Ok,
        status: Some(200),
        version_before: Some(expected),
        version_after: Some(stored.version),
        reason,
        flip: None,
        detail,
    };
    match cp.write_version(expected, stored, audit, &[]).await? {
        PutOutcome::Stored(version) => Ok(version),
        PutOutcome::Stale(now) => Err(stale(now)),
        PutOutcome::LockLost => Err(Refused::new(
            Kind::Unavailable,
            "store_unavailable",
            "the write was fenced off",
        )),
    }
}

/// Units whose region or slot ranges differ between `current` and `next` (new and removed
/// units included: their slots change hands).
pub fn unit_moves(current: &RawTable, next: &RawTable) -> Vec<UnitMove> {
    let mut moves = Vec::new();
    for unit in &next.units {
        let before = current.units.iter().find(|u| u.name == unit.name);
        let from = before.map(|u| u.region.clone());
        let region_change = from.as_deref() != Some(unit.region.as_str());
        let slots_change = before.is_none_or(|u| u.slots != unit.slots);
        if !region_change && !slots_change {
            continue;
        }
        let hint = match &from {
            Some(from) if region_change && !slots_change => format!(
                "moves {from} -> {}: use a flip (unitctl flip {} --to {} --reason TEXT, POST /v1/units/{}/flip)",
                unit.region, unit.name, unit.region, unit.name
            ),
            Some(_) => "its slots change: users move between units without a freeze".to_owned(),
            None => "a new unit takes slots from others: users move without a freeze".to_owned(),
        };
        moves.push(UnitMove {
            unit: unit.name.clone(),
            from,
            to: Some(unit.region.clone()),
            slots_change,
            hint,
        });
    }
    for unit in &current.units {
        if !next.units.iter().any(|u| u.name == unit.name) {
            moves.push(UnitMove {
                unit: unit.name.clone(),
                from: Some(unit.region.clone()),
                to: None,
                slots_change: true,
                hint: "removed: its slots go to other units without a freeze".to_owned(),
            });
        }
    }
    moves
}

/// `u03 sh -> sz, u05 slots`: the moves in a few words.
pub fn summary(moves: &[UnitMove]) -> String {
    moves
        .iter()
        .map(|m| match (&m.from, &m.to) {
            (Some(from), Some(to)) if from != to => format!("{} {from} -> {to}", m.unit),
            (None, _) => format!("{} added", m.unit),
            (_, None) => format!("{} removed", m.unit),
            _ => format!("{} slots", m.unit),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a table write that moves units is refused, naming each unit and what to do instead.
pub fn refusal(moves: &[UnitMove]) -> String {
    let each: Vec<String> = moves
        .iter()
        .map(|m| format!("unit {}: {}", m.unit, m.hint))
        .collect();
    format!(
        "the table moves {} unit(s) without a flip: {}. Flips move units with writes frozen and roll back on failure; to store it anyway, an admin sends X-Unitgate-Force: <reason> (unitctl table apply --force-moves REASON)",
        moves.len(),
        each.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RawTable {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/three-regions.yaml"
        );
        let text = std::fs::read_to_string(path).expect("example table");
        router_rules::parse_yaml(&text).expect("parses").0
    }

    #[test]
    fn region_and_slot_changes_are_moves_state_and_pins_are_not() {
        let current = table();
        let mut next = current.clone();
        next.units[0].state = router_rules::UnitState::WriteFrozen;
        next.units[1].pinned_keys = vec!["vip".into()];
        assert!(unit_moves(&current, &next).is_empty());
        let to = if next.units[2].region == "sz" {
            "hz"
        } else {
            "sz"
        };
        next.units[2].region = to.into();
        let moves = unit_moves(&current, &next);
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!(moves[0].unit, current.units[2].name);
        assert!(!moves[0].slots_change);
        assert!(
            refusal(&moves).contains("unitctl flip"),
            "{}",
            refusal(&moves)
        );
        next.units.pop();
        assert!(unit_moves(&current, &next).iter().any(|m| m.to.is_none()));
    }
}
