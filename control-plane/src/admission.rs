//! What a proposed table may change through `PUT /v1/table`. Moving a unit to another region,
//! or slots between units, moves users' writes: a flip does that safely (freeze, wait for the
//! data, switch, unfreeze); a table write would switch at once, in every gateway, with no
//! freeze and no way back. So a table write that moves units is refused unless an admin
//! forces it, and the plan says so beforehand.

use control_api::UnitMove;
use router_rules::RawTable;

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
                "moves {from} -> {}: use a flip (unitctl flip {} --to {}, POST /v1/units/{}/flip)",
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
