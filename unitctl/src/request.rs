//! The request `unitctl route` resolves, one or a batch of them: the region it enters and
//! where its routing key goes.

use router_rules::table::RegionIndex;
use router_rules::{CompiledTable, KeyPlacement, SimpleRequest};

use crate::Failure;

/// The index of region `name`, or the center unit's region.
pub fn entry_region(table: &CompiledTable, name: Option<&str>) -> Result<RegionIndex, Failure> {
    match name {
        None => Ok(table.center_unit().region),
        Some(name) => table.region_index(name).ok_or_else(|| {
            let known: Vec<&str> = table.regions().iter().map(|r| &*r.name).collect();
            Failure::input(format!(
                "unknown region {name:?} (--region); regions in the table: {}",
                known.join(", ")
            ))
        }),
    }
}

/// Put `user` where the matched route looks for its key first (router-rules' placement),
/// noting for people when it is not used.
pub fn place_key(
    table: &CompiledTable,
    request: &mut SimpleRequest,
    user: &str,
    notes: &mut Vec<String>,
) -> Result<(), Failure> {
    match router_rules::place_key(table, request, user).map_err(Failure::input)? {
        KeyPlacement::Placed => {}
        KeyPlacement::NotUsed(why) => notes.push(format!("--user not used: {why}")),
    }
    Ok(())
}
