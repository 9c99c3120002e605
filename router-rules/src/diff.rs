//! What a table change moves: the same code serves `unitctl diff`, the control plane's plan and
//! flip previews.

use serde::Serialize;

use crate::raw::{RawRegion, RawRoute, RawUnit};
use crate::table::CompiledTable;

/// The impact of replacing `old` with `new`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableDiff {
    /// Version of the old table.
    pub old_version: u64,
    /// Version of the new table.
    pub new_version: u64,
    /// Set when the slot space size changes: then nearly every key changes slot, and the slot
    /// figures below count every slot as moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot_count: Option<[u32; 2]>,
    /// Slots whose unit changes.
    pub slots_changing_unit: u32,
    /// Slots whose serving region changes (the unit moved, or the slot moved to a unit elsewhere).
    pub slots_changing_region: u32,
    /// Share of the key space whose unit changes, 0.0 to 1.0.
    pub share_changing_unit: f64,
    /// Share of the key space whose region changes, 0.0 to 1.0.
    pub share_changing_region: f64,
    /// Runs of consecutive slots that change unit or region.
    pub slot_moves: Vec<SlotMove>,
    /// Units added, removed or changed.
    pub units: Vec<UnitChange>,
    /// Regions added, removed or changed.
    pub regions: Vec<NamedChange>,
    /// Route rules added, removed or changed.
    pub routes: Vec<NamedChange>,
    /// Other table-wide settings that changed (`write_methods`, slot functions).
    pub settings: Vec<String>,
}

/// A run of slots `first..=last` moving together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotMove {
    /// First slot of the run.
    pub first: u32,
    /// Last slot of the run.
    pub last: u32,
    /// Unit before.
    pub from_unit: String,
    /// Unit after.
    pub to_unit: String,
    /// Serving region before.
    pub from_region: String,
    /// Serving region after.
    pub to_region: String,
}

/// `added`, `removed` or `changed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Only in the new table.
    Added,
    /// Only in the old table.
    Removed,
    /// In both, different.
    Changed,
}

/// A unit's change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitChange {
    /// Unit name.
    pub unit: String,
    /// What happened to it.
    pub change: ChangeKind,
    /// `[old, new]` region, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<[String; 2]>,
    /// `[old, new]` state, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<[String; 2]>,
    /// Other fields that changed (`slots`, `standby`, `center`, `pinned_keys`, `limits`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<&'static str>,
}

/// A region's or route's change, naming the fields that differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedChange {
    /// Region or route name.
    pub name: String,
    /// What happened to it.
    pub change: ChangeKind,
    /// Fields that differ, for `changed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<&'static str>,
}

/// How many of a sample of keys a change moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SampleImpact {
    /// Keys in the sample.
    pub keys: u64,
    /// Keys whose unit changes.
    pub changing_unit: u64,
    /// Keys whose serving region changes.
    pub changing_region: u64,
}

impl TableDiff {
    /// Whether the change moves nothing and changes nothing (the version aside).
    pub fn is_empty(&self) -> bool {
        self.slot_count.is_none()
            && self.slot_moves.is_empty()
            && self.units.is_empty()
            && self.regions.is_empty()
            && self.routes.is_empty()
            && self.settings.is_empty()
    }
}

/// The impact of replacing `old` with `new`.
pub fn diff(old: &CompiledTable, new: &CompiledTable) -> TableDiff {
    let mut d = TableDiff {
        old_version: old.version(),
        new_version: new.version(),
        slot_count: None,
        slots_changing_unit: 0,
        slots_changing_region: 0,
        share_changing_unit: 0.0,
        share_changing_region: 0.0,
        slot_moves: Vec::new(),
        units: unit_changes(&old.raw().units, &new.raw().units),
        regions: named_changes(
            &old.raw().regions,
            &new.raw().regions,
            |r| &r.name,
            region_fields,
        ),
        routes: named_changes(
            &old.raw().routes,
            &new.raw().routes,
            |r| &r.name,
            route_fields,
        ),
        settings: Vec::new(),
    };
    if old.raw().write_methods != new.raw().write_methods {
        d.settings.push("write_methods".to_owned());
    }
    if old.raw().slots.numeric != new.raw().slots.numeric {
        d.settings.push("slots.numeric".to_owned());
    }
    if old.raw().slots.string != new.raw().slots.string {
        d.settings.push("slots.string".to_owned());
    }
    if old.slot_count() != new.slot_count() {
        d.slot_count = Some([old.slot_count(), new.slot_count()]);
        d.slots_changing_unit = new.slot_count();
        d.slots_changing_region = new.slot_count();
        d.share_changing_unit = 1.0;
        d.share_changing_region = 1.0;
        return d;
    }
    for slot in 0..old.slot_count() {
        let (a, b) = (old.unit_of_slot(slot), new.unit_of_slot(slot));
        let (ra, rb) = (
            &*old.regions()[a.region].name,
            &*new.regions()[b.region].name,
        );
        let unit_moves = a.name != b.name;
        let region_moves = ra != rb;
        if !unit_moves && !region_moves {
            continue;
        }
        d.slots_changing_unit += u32::from(unit_moves);
        d.slots_changing_region += u32::from(region_moves);
        match d.slot_moves.last_mut() {
            Some(run)
                if run.last + 1 == slot
                    && run.from_unit == *a.name
                    && run.to_unit == *b.name
                    && run.from_region == ra
                    && run.to_region == rb =>
            {
                run.last = slot;
            }
            _ => d.slot_moves.push(SlotMove {
                first: slot,
                last: slot,
                from_unit: a.name.to_string(),
                to_unit: b.name.to_string(),
                from_region: ra.to_owned(),
                to_region: rb.to_owned(),
            }),
        }
    }
    let count = f64::from(old.slot_count());
    d.share_changing_unit = f64::from(d.slots_changing_unit) / count;
    d.share_changing_region = f64::from(d.slots_changing_region) / count;
    d
}

/// How many of `keys` change unit or region between `old` and `new` (pinned keys included).
pub fn sample_impact<'k>(
    old: &CompiledTable,
    new: &CompiledTable,
    keys: impl IntoIterator<Item = &'k str>,
) -> SampleImpact {
    let mut impact = SampleImpact::default();
    for key in keys {
        let (a, _, _) = old.unit_of_key(key);
        let (b, _, _) = new.unit_of_key(key);
        impact.keys += 1;
        impact.changing_unit += u64::from(a.name != b.name);
        impact.changing_region +=
            u64::from(old.regions()[a.region].name != new.regions()[b.region].name);
    }
    impact
}

fn unit_changes(old: &[RawUnit], new: &[RawUnit]) -> Vec<UnitChange> {
    let mut changes = Vec::new();
    for a in old {
        match new.iter().find(|b| b.name == a.name) {
            None => changes.push(UnitChange {
                unit: a.name.clone(),
                change: ChangeKind::Removed,
                region: None,
                state: None,
                fields: Vec::new(),
            }),
            Some(b) if a != b => {
                let mut fields = Vec::new();
                let sorted = |u: &RawUnit| {
                    let mut s = u.slots.clone();
                    s.sort_unstable();
                    s
                };
                if sorted(a) != sorted(b) {
                    fields.push("slots");
                }
                if a.standby != b.standby {
                    fields.push("standby");
                }
                if a.center != b.center {
                    fields.push("center");
                }
                if a.pinned_keys != b.pinned_keys {
                    fields.push("pinned_keys");
                }
                if a.limits != b.limits {
                    fields.push("limits");
                }
                changes.push(UnitChange {
                    unit: a.name.clone(),
                    change: ChangeKind::Changed,
                    region: (a.region != b.region).then(|| [a.region.clone(), b.region.clone()]),
                    state: (a.state != b.state)
                        .then(|| [a.state.as_str().to_owned(), b.state.as_str().to_owned()]),
                    fields,
                });
            }
            Some(_) => {}
        }
    }
    for b in new.iter().filter(|b| !old.iter().any(|a| a.name == b.name)) {
        changes.push(UnitChange {
            unit: b.name.clone(),
            change: ChangeKind::Added,
            region: None,
            state: None,
            fields: Vec::new(),
        });
    }
    changes.retain(|c| {
        c.change != ChangeKind::Changed
            || c.region.is_some()
            || c.state.is_some()
            || !c.fields.is_empty()
    });
    changes
}

fn named_changes<T: PartialEq>(
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
    fields: impl Fn(&T, &T) -> Vec<&'static str>,
) -> Vec<NamedChange> {
    let mut changes = Vec::new();
    for a in old {
        match new.iter().find(|b| name(b) == name(a)) {
            None => changes.push(NamedChange {
                name: name(a).clone(),
                change: ChangeKind::Removed,
                fields: Vec::new(),
            }),
            Some(b) if a != b => changes.push(NamedChange {
                name: name(a).clone(),
                change: ChangeKind::Changed,
                fields: fields(a, b),
            }),
            Some(_) => {}
        }
    }
    for b in new
        .iter()
        .filter(|b| !old.iter().any(|a| name(a) == name(b)))
    {
        changes.push(NamedChange {
            name: name(b).clone(),
            change: ChangeKind::Added,
            fields: Vec::new(),
        });
    }
    changes
}

fn region_fields(a: &RawRegion, b: &RawRegion) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if a.gateways != b.gateways {
        fields.push("gateways");
    }
    if a.pools != b.pools {
        fields.push("pools");
    }
    if a.read_fallback != b.read_fallback {
        fields.push("read_fallback");
    }
    fields
}

fn route_fields(a: &RawRoute, b: &RawRoute) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if a.matcher != b.matcher {
        fields.push("match");
    }
    if a.service != b.service {
        fields.push("service");
    }
    if a.class != b.class {
        fields.push("class");
    }
    if a.key != b.key {
        fields.push("key");
    }
    if a.missing_key != b.missing_key {
        fields.push("missing_key");
    }
    if a.key_format != b.key_format {
        fields.push("key_format");
    }
    if a.balance != b.balance {
        fields.push("balance");
    }
    if a.limits != b.limits {
        fields.push("limits");
    }
    fields
}
