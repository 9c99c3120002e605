//! Problems found in a routing table, each with the place it was found.

use std::fmt;

use serde::Serialize;

/// A position in a source text. Both numbers start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Location {
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One thing wrong with a table: where (field path and, for YAML, line and column) and what.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Problem {
    /// Field path in the table, e.g. `units[3].slots[1]`; empty for the document itself.
    pub path: String,
    /// Line and column in the source, when the source was YAML and the place is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// What is wrong, naming the bad value and what is allowed.
    pub message: String,
}

impl Problem {
    /// A problem at `path`; its location is filled in later from the source map.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            location: None,
            message: message.into(),
        }
    }

    /// The path as shown to people: `(document)` for the root.
    pub fn display_path(&self) -> &str {
        if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        }
    }

    /// `origin:line:col: path: message`, the form editors and CI logs understand. Without a
    /// location: `origin: path: message`.
    pub fn render(&self, origin: &str) -> String {
        match self.location {
            Some(location) => format!(
                "{origin}:{location}: {}: {}",
                self.display_path(),
                self.message
            ),
            None => format!("{origin}: {}: {}", self.display_path(), self.message),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = self.location {
            write!(f, "{location}: ")?;
        }
        write!(f, "{}: {}", self.display_path(), self.message)
    }
}

/// Why a table was refused: every problem found, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TableError {
    /// Never empty.
    pub problems: Vec<Problem>,
}

impl TableError {
    /// One problem.
    pub fn single(problem: Problem) -> Self {
        Self {
            problems: vec![problem],
        }
    }

    /// Every problem as `origin:line:col: path: message`, one per line.
    pub fn render(&self, origin: &str) -> String {
        let mut out = String::new();
        for problem in &self.problems {
            out.push_str(&problem.render(origin));
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "routing table refused: {count} problem{}",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}
