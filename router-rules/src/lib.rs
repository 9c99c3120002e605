//! Routing tables for unitgate, the unit routing gateway.
//!
//! One library decides every route: the gateway, the control plane and the `unitctl` dry-run
//! all call [`CompiledTable::resolve`], so what the dry-run shows is what the gateway does.
//!
//! The flow is one way: text -> [`RawTable`] ([`parse_yaml`], [`parse_json`]) ->
//! [`validate`] -> [`CompiledTable`]. [`load_yaml`] and [`load_json`] do all of it.
//! This crate is pure: no I/O, no threads, no clock.

#![forbid(unsafe_code)]

pub mod diff;
pub mod error;
pub mod key;
pub mod path;
pub mod placement;
pub mod raw;
pub mod report;
pub mod request;
pub mod slot;
pub mod source;
pub mod table;
pub mod validate;

pub use diff::{TableDiff, diff};
pub use error::{Location, Problem, TableError, render_problems};
pub use key::{KeyError, KeySource, RoutingKey};
pub use placement::{KeyPlacement, place_key};
pub use raw::{
    Balance, Class, KeyFormat, MissingKeyPolicy, RawLimits, RawPool, RawTable, RawTls, UnitState,
    UpstreamProtocol,
};
pub use report::DecisionReport;
pub use request::{METHOD_OVERRIDE_FIELDS, RequestView, SimpleRequest};
pub use source::{SourceFile, SourceMap, from_yaml, parse_json, parse_yaml};
pub use table::{
    Action, ClientAuth, CompiledTable, Decision, Endpoint, Pool, Region, Route, Unit, UpstreamTls,
};
pub use validate::{check_successor, validate};

/// Parse and validate a YAML table; problems carry line and column.
pub fn load_yaml(text: &str) -> Result<CompiledTable, TableError> {
    let (raw, source) = parse_yaml(text)?;
    validate(raw, Some(&source))
}

/// Parse and validate a JSON table; problems carry field paths.
pub fn load_json(text: &str) -> Result<CompiledTable, TableError> {
    validate(parse_json(text)?, None)
}

/// The JSON Schema of the table format, generated from [`RawTable`].
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RawTable)).unwrap_or_default()
}
