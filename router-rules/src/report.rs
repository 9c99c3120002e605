//! A decision written out for people and scripts: the `unitctl route --output json` object.
//! Its field names are a stable interface; docs/routing-table.md lists them.

use serde::Serialize;

use crate::raw::{Balance, Class};
use crate::slot::numeric_value;
use crate::table::{Action, CompiledTable, Decision};

/// An owned, serialisable account of a [`Decision`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionReport {
    /// Version of the table that decided.
    pub table_version: u64,
    /// `forward`, `write_frozen`, `missing_key`, `invalid_key` or `no_route`.
    pub action: &'static str,
    /// Matched route name.
    pub route: Option<String>,
    /// `"C"` or `"P"`.
    pub class: Option<&'static str>,
    /// Service of the matched route.
    pub service: Option<String>,
    /// Request method.
    pub method: String,
    /// Whether the request counts as a write: by its method, or a method-override field
    /// naming a write.
    pub is_write: bool,
    /// Routing key.
    pub key: Option<String>,
    /// Where the key came from, e.g. `header:x-user-id`.
    pub key_source: Option<String>,
    /// Why the key found cannot be used (`invalid_key`): `too_long`, `undecodable`,
    /// `ambiguous`.
    pub key_error: Option<&'static str>,
    /// Key sources tried, in order (C-class).
    pub key_sources_tried: Vec<String>,
    /// Slot of the key.
    pub slot: Option<u32>,
    /// How the slot was computed: `modulo` (numeric key) or `fnv1a-64` (string key).
    pub slot_function: Option<&'static str>,
    /// Whether the key is pinned to its unit by an allow-list (the slot is then not used).
    pub pinned: bool,
    /// Unit that owns the request.
    pub unit: Option<String>,
    /// State of that unit: `active` or `write_frozen`.
    pub unit_state: Option<&'static str>,
    /// Region the request entered.
    pub entry_region: String,
    /// Region that serves the request.
    pub region: Option<String>,
    /// Whether the entry gateway forwards the request to another region's gateways.
    pub cross_region: bool,
    /// Gateways of the serving region, when the request is forwarded there.
    pub forward_via: Vec<String>,
    /// P-class reads: region used when the serving region's pool is down.
    pub fallback_region: Option<String>,
    /// `round_robin` or `key_affinity`.
    pub balance: Option<&'static str>,
    /// Endpoints of the serving pool.
    pub pool: Vec<String>,
    /// The endpoint this request goes to, when the table alone decides it (key affinity, or a
    /// pool of one); `null` when the gateway rotates over several (round robin).
    pub endpoint: Option<String>,
}

impl DecisionReport {
    /// Write out `decision`, made by `table` for a request with `method`.
    pub fn new(table: &CompiledTable, decision: &Decision<'_, '_>, method: &str) -> Self {
        let route = decision.route;
        let key = decision.key.as_ref().map(|k| k.as_str().to_owned());
        let endpoint = decision.pool.and_then(|pool| {
            match (route.map(|r| r.balance), &key, pool.endpoints.as_slice()) {
                (_, _, [only]) => Some(only.address.to_string()),
                (Some(Balance::KeyAffinity), Some(key), _) => pool
                    .affinity_order(key)
                    .next()
                    .map(|e| e.address.to_string()),
                _ => None,
            }
        });
        Self {
            table_version: table.version(),
            action: decision.action.as_str(),
            route: route.map(|r| r.name.to_string()),
            class: route.map(|r| r.class.as_str()),
            service: route.map(|r| table.services()[r.service].to_string()),
            method: method.to_owned(),
            is_write: decision.is_write,
            key_source: decision.key_source.map(ToString::to_string),
            key_error: decision.key_error.map(|e| e.as_str()),
            key_sources_tried: match route {
                Some(r) if r.class == Class::C => {
                    r.key_sources.iter().map(ToString::to_string).collect()
                }
                _ => Vec::new(),
            },
            slot: decision.slot,
            slot_function: key.as_deref().map(|k| match numeric_value(k) {
                Some(_) => "modulo",
                None => "fnv1a-64",
            }),
            key,
            pinned: decision.pinned,
            unit: decision.unit.map(|u| u.name.to_string()),
            unit_state: decision.unit.map(|u| u.state.as_str()),
            entry_region: decision.entry_region.name.to_string(),
            region: decision.region.map(|r| r.name.to_string()),
            cross_region: decision.is_cross_region(),
            forward_via: match decision.region {
                Some(r) if decision.is_cross_region() => {
                    r.gateways.iter().map(ToString::to_string).collect()
                }
                _ => Vec::new(),
            },
            fallback_region: decision.fallback_region.map(|r| r.name.to_string()),
            balance: route
                .filter(|_| decision.action == Action::Forward)
                .map(|r| r.balance.as_str()),
            pool: decision
                .pool
                .map(|p| p.endpoints.iter().map(|e| e.address.to_string()).collect())
                .unwrap_or_default(),
            endpoint,
        }
    }
}
