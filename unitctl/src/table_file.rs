//! Reading table files.

use std::path::Path;

use router_rules::{CompiledTable, TableError};

use crate::{EXIT_INPUT, Failure};

/// The text of `path`, or a clear error.
pub fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::input(format!("{}: cannot read: {e}", path.display())))
}

/// Parse and validate `text` read from `path`: JSON for `.json` files, YAML otherwise.
pub fn load(path: &Path, text: &str) -> Result<CompiledTable, TableError> {
    if control_api::files::is_json(path) {
        router_rules::load_json(text)
    } else {
        router_rules::load_yaml(text)
    }
}

/// Read and load a table that a command needs to go on: an invalid table is an input error.
pub fn load_or_fail(path: &Path) -> Result<CompiledTable, Failure> {
    let text = read(path)?;
    load(path, &text).map_err(|error| Failure {
        code: EXIT_INPUT,
        message: error.render(&path.display().to_string()),
    })
}
